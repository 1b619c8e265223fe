"use strict";
(() => {
  const data = JSON.parse(document.getElementById("sheet-data").textContent);
  const PAGE = data.pageSize;
  const STATES = ["all", "succeeded", "failed", "submitted", "pending", "retired"];
  const LABEL = {all: "All", succeeded: "Succeeded", failed: "Failed", submitted: "Submitted", pending: "Pending",
    retired: "No longer in manifest"};
  const EXIT = {0: "every item succeeded", 1: "some items failed", 2: "manifest or settings error",
    3: "key or quota refused", 4: "another run held the lock", 5: "incomplete: rerun to continue"};
  const $ = (id) => document.getElementById(id);
  const make = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
      node.dir = "auto";  // a prompt or message (with U+202E) is isolated: it never reorders what surrounds it
    }
    return node;
  };
  const num = (n) => Number(n).toLocaleString("en-US");
  const plural = (n, one, many) => num(n) + " " + (n === 1 ? one : many);
  const took = (s) =>  // the ledger's times are whole seconds; a run's wall time is not
    s < 120 ? (Number.isInteger(s) ? s : s.toFixed(1)) + " s"
    : s < 7200 ? (s / 60).toFixed(1) + " min" : (s / 3600).toFixed(1) + " h";
  const items = data.items;
  for (const item of items) item.hay = (item.id + "\n" + item.prompt + "\n" + (item.model || "")).toLowerCase();
  // Several models: cards that share a prompt sit side by side, one per model (the "which model" view).
  const models = [...new Set(items.map((item) => item.model).filter(Boolean))].sort();
  if (models.length > 1) {
    const order = new Map(items.map((item, i) => [item, i]));
    const first = new Map();
    for (const item of items) if (!first.has(item.prompt)) first.set(item.prompt, order.get(item));
    items.sort((a, b) => first.get(a.prompt) - first.get(b.prompt) ||
      (a.model || "").localeCompare(b.model || "") || order.get(a) - order.get(b));
  }
  // Review (served by `batchgen review`): approve / reject controls, kept by the server before it answers.
  const review = data.review || null;
  const VERDICTS = ["any", "approved", "rejected", "undecided"];
  const VLABEL = {any: "Any decision", approved: "Approved", rejected: "Rejected", undecided: "Undecided"};

  let filter = "all", model = "", query = "", page = 0, shown = items, current = -1, opener = null;
  let verdict = "any", cursor = -1;
  const verdictOf = (item) => item.decision || "undecided";

  // ---- header: the night at a glance
  const ids = new Set(items.map((item) => item.id));
  const images = items.filter((item) => item.file).length;
  $("sub").textContent = plural(ids.size, "item", "items") + " · " + plural(images, "image", "images") +
    (data.updated ? " · ledger updated " + data.updated.replace("T", " ").replace("Z", " UTC") : "");
  const figures = $("figures");
  const figure = (label, value, note, cls) => {
    const box = make("div", cls);
    box.append(make("dt", "", label));
    const dd = make("dd", "", value);
    if (note) dd.append(" ", make("small", "", note));
    box.append(dd);
    figures.append(box);
  };
  const run = data.run;
  if (run) {
    if ("exit_code" in run) {
      const code = run.exit_code;
      const meaning = EXIT[code] || (code > 128 ? "stopped by signal " + (code - 128) : "");
      const tone = code === 0 ? "exit-ok" : code === 1 || code === 5 ? "exit-warn" : "exit-bad";
      figure("Exit code", code, meaning, tone + " wide");
    }
    if ("paid_creates" in run) figure("Paid creates", num(run.paid_creates));
    if ("retries" in run) figure("Retries", num(run.retries));
    if ("rate_limited" in run) figure("429s", num(run.rate_limited));
    if (run.in_doubt) figure("In doubt", num(run.in_doubt), "maybe paid twice", "exit-warn");
    if ("seconds" in run) figure("Wall time", took(run.seconds));
    if ("finished_timestamp" in run) {
      const when = new Date(run.finished_timestamp * 1000).toISOString().slice(0, 16).replace("T", " ");
      figure("Finished", when, "UTC", "wide");
    }
  } else {
    const note = make("p", "", "No figures of the last run are recorded here (a run writes them at its end): " +
      "the counts below come from the ledger alone.");
    note.id = "no-run";
    figures.append(note);
  }

  // ---- filter and search: applied to the data, never to thousands of DOM nodes
  const chips = $("chips");
  const buttons = {};
  for (const state of STATES) {
    const button = make("button", "", LABEL[state]);
    button.type = "button";
    button.dataset.state = state;
    button.append(make("b"));
    button.addEventListener("click", () => { filter = state; page = 0; apply(); });
    chips.append(button);
    buttons[state] = button;
  }
  const picker = $("model");
  if (models.length > 1) {
    picker.append(new Option("All models", ""));
    for (const name of models) picker.append(new Option(name, name));
    picker.hidden = false;
    picker.addEventListener("change", () => { model = picker.value; page = 0; apply(); });
  }
  const judged = $("verdicts");
  const vbuttons = {};
  for (const name of VERDICTS) {
    const button = make("button", "", VLABEL[name]);
    button.type = "button";
    button.dataset.verdict = name;
    button.append(make("b"));
    button.addEventListener("click", () => { verdict = name; page = 0; apply(); });
    judged.append(button);
    vbuttons[name] = button;
  }
  judged.hidden = !review && !items.some((item) => item.decision);
  function apply(keep) {
    let searched = query ? items.filter((item) => item.hay.includes(query)) : items;
    if (model) searched = searched.filter((item) => item.model === model);
    const vper = {any: 0, approved: 0, rejected: 0, undecided: 0};
    for (const item of searched) if (item.file) { vper.any++; vper[verdictOf(item)]++; }
    for (const name of VERDICTS) {
      vbuttons[name].lastChild.textContent = num(vper[name]);
      vbuttons[name].setAttribute("aria-pressed", String(name === verdict));
    }
    const matching = verdict === "any" ? searched : searched.filter((item) => item.file && verdictOf(item) === verdict);
    const per = {};
    for (const state of STATES) per[state] = new Set();
    for (const item of matching) { per.all.add(item.id); per[item.state].add(item.id); }
    for (const state of STATES) {
      const button = buttons[state];
      button.lastChild.textContent = num(per[state].size);
      button.setAttribute("aria-pressed", String(state === filter));
      button.hidden = state === "retired" && !items.some((item) => item.state === "retired");
    }
    shown = filter === "all" ? matching : matching.filter((item) => item.state === filter);
    render();
    if (keep && cursor >= 0) focusCard(cursor);
  }
  $("q").addEventListener("input", (event) => { query = event.target.value.trim().toLowerCase(); page = 0; apply(); });

  // ---- one page of cards
  function card(item, index) {
    const box = make("figure", "card s-" + item.state);
    box.dataset.index = String(index);
    box.dataset.id = item.id;
    if (item.decision) box.dataset.decision = item.decision;
    const thumb = make(item.file ? "a" : "button", "thumb");
    if (item.file) thumb.href = item.file; else thumb.type = "button";
    thumb.setAttribute("aria-label", "open " + item.id);
    if (item.thumb) {
      const img = make("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.src = item.thumb;
      img.alt = item.prompt;
      thumb.append(img);
    } else {
      const none = make("span", "none");
      none.append(make("b", "", item.file ? "no preview" : LABEL[item.state]));
      if (item.reason) none.append(make("span", "", item.reason));
      thumb.append(none);
    }
    thumb.addEventListener("click", (event) => {
      if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      opener = thumb;
      show(index);
    });
    const caption = make("figcaption");
    const head = make("div", "head");
    head.append(make("span", "id", item.id + (item.part ? " · " + item.part : "")));
    head.append(make("span", "badge s-" + item.state, item.state === "retired" ? "retired" : item.state));
    head.firstChild.title = item.id;
    if (item.decision && !review) head.append(make("span", "badge d-" + item.decision, item.decision));
    caption.append(head);
    const prompt = make("p", "prompt", item.prompt);
    prompt.title = item.prompt;
    caption.append(prompt);
    caption.append(meta(item, "p", "span"));
    if (review && item.file) caption.append(controls(item, index));
    box.append(thumb, caption);
    box.addEventListener("focusin", () => { cursor = index; });
    return box;
  }
  function controls(item, index) {
    const row = make("div", "decide");
    row.setAttribute("role", "group");
    row.setAttribute("aria-label", "decision on " + item.id);
    for (const [decision, label, key] of [["approved", "Approve", "a"], ["rejected", "Reject", "r"]]) {
      const button = make("button", "do-" + decision, label);
      button.type = "button";
      button.dataset.decision = decision;
      button.setAttribute("aria-label", label.toLowerCase() + " " + item.id + " (" + key + ")");
      button.setAttribute("aria-pressed", String(item.decision === decision));
      button.addEventListener("click", () => { cursor = index; decide(item, decision); });
      row.append(button);
    }
    return row;
  }
  // A decision shows as made only once the server answered 200: it is then fsync'd in DIR.
  async function decide(item, decision) {
    const note = $("saved");
    note.textContent = "Saving " + item.id + "…";
    let answer = null;
    try {
      answer = await fetch(review.endpoint, {
        method: "POST", credentials: "omit", cache: "no-store",
        headers: {"Content-Type": "application/json", "X-Batchgen-Token": review.token},
        body: JSON.stringify({id: item.id, decision: decision}),
      });
    } catch (error) {
      answer = null;
    }
    if (!answer || !answer.ok) {
      const why = answer ? await answer.text() : "the review server cannot be reached";
      note.textContent = "Not saved: " + item.id + ": " + why;
      note.className = "saved failed";
      return;
    }
    for (const other of items) if (other.id === item.id) other.decision = decision;
    note.textContent = (decision === "approved" ? "Approved " : "Rejected ") + item.id;
    note.className = "saved";
    apply(true);
    if (!box.hidden && current >= 0 && shown[current]) show(current);
  }
  function focusCard(index) {
    if (!shown.length) return;
    cursor = Math.min(Math.max(index, 0), shown.length - 1);
    if (Math.floor(cursor / PAGE) !== page) { page = Math.floor(cursor / PAGE); render(); }
    const node = document.querySelector('.card[data-index="' + cursor + '"]');
    if (node) { node.tabIndex = -1; node.focus(); }
  }
  function meta(item, tag, part) {
    const line = make(tag, "meta");
    const add = (label, value) => {
      const bit = make(part);
      bit.append(label + " ", make("b", "", value));
      line.append(bit);
    };
    if (item.model && models.length > 1) add("model", item.model);
    if (item.seed !== undefined) add("seed", item.seed);
    if (item.roll) add("roll", item.roll);
    if (item.took !== undefined) add(item.was === "succeeded" ? "generated in" : "took", took(item.took));
    if (item.params) line.append(make(part, "", item.params.join(" · ")));
    return line;
  }
  function render() {
    const pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(Math.max(page, 0), pages - 1);
    const start = page * PAGE;
    const slice = shown.slice(start, start + PAGE);
    const cards = document.createDocumentFragment();
    slice.forEach((item, k) => cards.append(card(item, start + k)));
    $("grid").replaceChildren(cards);
    $("shown").textContent = shown.length
      ? (pages > 1 ? "Showing " + num(start + 1) + "–" + num(start + slice.length) + " of " : "Showing ") +
        plural(shown.length, "card", "cards") + (filter === "all" ? "" : " · " + LABEL[filter].toLowerCase()) +
        (query ? " · matching “" + query + "”" : "")
      : "Nothing matches" + (query ? " “" + query + "”" : "") + ".";
    const pager = $("pager");
    pager.replaceChildren();
    if (pages > 1) {
      const step = (label, to, name) => {
        const button = make("button", "", label);
        button.type = "button";
        button.dataset.go = name;
        button.disabled = to < 0 || to >= pages;
        button.addEventListener("click", () => { page = to; render(); $("shown").scrollIntoView(); });
        return button;
      };
      pager.append(step("‹ Previous", page - 1, "prev"), make("span", "", "Page " + (page + 1) + " of " + pages),
        step("Next ›", page + 1, "next"));
    }
  }

  // ---- the lightbox: the full image, previous/next over what the filter shows, Escape closes
  const box = $("lightbox"), img = $("lb-img"), link = $("lb-link"), none = $("lb-none"), info = $("lb-info");
  function show(index) {
    if (index < 0 || index >= shown.length) return;
    current = index;
    const item = shown[index];
    if (Math.floor(index / PAGE) !== page) { page = Math.floor(index / PAGE); render(); }
    box.hidden = false;
    document.body.classList.add("lb-open");
    if (item.file) {
      img.hidden = false;
      img.src = item.file;
      img.alt = item.prompt;
      link.href = item.file;
      none.hidden = true;
    } else {
      img.hidden = true;
      img.removeAttribute("src");
      link.removeAttribute("href");
      none.hidden = false;
      none.textContent = LABEL[item.state] + (item.reason ? ": " + item.reason : "");
      none.dir = "auto";
    }
    info.replaceChildren();
    info.append(make("div", "lb-count", num(index + 1) + " / " + num(shown.length)));
    info.append(make("h2", "", item.id + (item.part ? " · image " + item.part : "")));
    info.append(make("span", "badge s-" + item.state, LABEL[item.state]));
    info.append(make("p", "prompt", item.prompt));
    const facts = make("dl");
    const fact = (label, value) => { facts.append(make("dt", "", label), make("dd", "", value)); };
    if (item.seed !== undefined) fact("Seed", item.seed);
    if (item.took !== undefined) fact(item.was === "succeeded" ? "Generation time" : "Time taken", took(item.took));
    if (item.params) fact("Parameters", item.params.join(" · "));
    if (item.state === "retired") fact("Ledger state", item.was);
    if (item.reason) fact("Reason", item.reason);
    if (item.decision) fact("Decision", item.decision);
    if (review && item.file) info.append(controls(item, index));
    if (item.file) {
      const size = make("dd", "", "");
      size.id = "lb-size";
      facts.append(make("dt", "", "Size"), size);
      const open = make("a", "", decodeURIComponent(item.file.split("?")[0]));
      open.href = item.file;
      open.target = "_blank";
      open.rel = "noopener";
      const dd = make("dd");
      dd.append(open);
      facts.append(make("dt", "", "File"), dd);
    }
    if (item.sidecar) {
      const meta = make("a", "", decodeURIComponent(item.sidecar.split("?")[0]));
      meta.href = item.sidecar;
      meta.target = "_blank";
      meta.rel = "noopener";
      const dd = make("dd");
      dd.append(meta);
      facts.append(make("dt", "", "Metadata"), dd);
    }
    info.append(facts);
    $("lb-prev").disabled = index === 0;
    $("lb-next").disabled = index === shown.length - 1;
    if (!box.contains(document.activeElement)) $("lb-close").focus();
  }
  img.addEventListener("load", () => {
    const size = $("lb-size");
    if (size) size.textContent = img.naturalWidth + " × " + img.naturalHeight;
  });
  function close() {
    if (box.hidden) return;
    box.hidden = true;
    document.body.classList.remove("lb-open");
    img.removeAttribute("src");
    const back = document.querySelector('.card[data-index="' + current + '"] .thumb') || opener;
    current = -1;
    if (back) back.focus();
  }
  $("lb-prev").addEventListener("click", () => show(current - 1));
  $("lb-next").addEventListener("click", () => show(current + 1));
  $("lb-close").addEventListener("click", close);
  box.addEventListener("click", (event) => {
    if (event.target === box || event.target.classList.contains("lb-stage")) close();
  });
  document.addEventListener("keydown", (event) => {
    const typing = document.activeElement === $("q");
    if (review && !typing && !event.ctrlKey && !event.metaKey && !event.altKey && (event.key === "a" || event.key === "r")) {
      const index = !box.hidden ? current : cursor;
      if (index >= 0 && shown[index] && shown[index].file) {
        event.preventDefault();
        cursor = index;
        decide(shown[index], event.key === "a" ? "approved" : "rejected");
      }
      return;
    }
    if (!box.hidden) {
      if (event.key === "Escape") close();
      else if (event.key === "ArrowLeft") show(current - 1);
      else if (event.key === "ArrowRight") show(current + 1);
      else return;
      event.preventDefault();
    } else if (event.key === "/" && !typing) {
      event.preventDefault();
      $("q").focus();
    } else if (!typing && (event.key === "ArrowRight" || event.key === "ArrowDown")) {
      event.preventDefault();
      focusCard(cursor + 1);
    } else if (!typing && (event.key === "ArrowLeft" || event.key === "ArrowUp")) {
      event.preventDefault();
      focusCard(cursor < 0 ? 0 : cursor - 1);
    }
  });

  apply();
})();
