try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C (SIGINT) while Python imports batchgen: nothing was done yet
    raise SystemExit(130) from None

raise SystemExit(main())
