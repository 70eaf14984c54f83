// The page's few behaviours: list the poets served, ask the API for a poem, show it line by line, copy it.
"use strict";

const $ = (id) => document.getElementById(id);
const KNOBS = ["temperature", "top_p", "words"];
const SAVED = "neuralda.choices"; // the poet, start and knobs chosen last, kept in this browser
const BUSY_RETRIES = 2; // a 503 "ask again in a moment" is asked again this many times, after its Retry-After
let runs = [];
let poemText = "";
let writing = null; // the AbortController of the poem being written

function chosen() {
  const [run, checkpoint] = JSON.parse($("choice").value);
  const info = runs.find((r) => r.name === run);
  return { run: info, checkpoint: info.checkpoints.find((c) => c.name === checkpoint) };
}

// As the tables write it (Python's format_ppl): one decimal, or four digits and a power of ten past a million.
function formatPpl(value) {
  // A tie rounds to the even digit in Python, up in toFixed: of the ties one decimal can meet, only x.25 differs.
  if (value < 1e6) return value % 1 === 0.25 ? `${Math.trunc(value)}.2` : value.toFixed(1);
  const [digits, power] = value.toPrecision(4).split("e");
  return `${digits.replace(/\.?0+$/, "")}e${power[0]}${power.slice(1).padStart(2, "0")}`;
}

function describe() {
  const { run, checkpoint } = chosen();
  const parts = [
    `${run.name} (${run.arch}, ${run.layers} × ${run.hidden})`,
    `${run.vocab_size.toLocaleString()} words and marks in its vocabulary`,
  ];
  if (checkpoint.val_ppl != null) {
    const epochs = checkpoint.epoch === 1 ? "epoch" : "epochs";
    const when = checkpoint.epoch != null ? ` after ${checkpoint.epoch} ${epochs}` : "";
    parts.push(`held-out perplexity ${formatPpl(checkpoint.val_ppl)}${when}`);
  }
  $("model").textContent = parts.join(" · ");
  $("start").placeholder = run.start || "any word"; // a Spanish poet's model has no "love": it begins anywhere
  setLang($("start"), run.lang);
}

// A checkpoint as the Poet list names it: its epoch and held-out perplexity, to compare them without choosing each.
function checkpointLabel(run, c) {
  const facts = [c.epoch != null && `epoch ${c.epoch}`, c.val_ppl != null && `perplexity ${formatPpl(c.val_ppl)}`];
  const shown = facts.filter(Boolean).join(", ");
  return `${run.name} · ${c.name}${shown ? ` (${shown})` : ""}`;
}

async function loadModels() {
  const response = await fetch("api/models");
  if (!response.ok) throw new Error(`the server answered ${response.status}`);
  runs = (await response.json()).runs;
  const select = $("choice");
  for (const run of runs) {
    for (const c of run.checkpoints) {
      const option = new Option(checkpointLabel(run, c));
      option.value = JSON.stringify([run.name, c.name]);
      option.selected = c.name === run.default_checkpoint && run === runs[0];
      select.add(option);
    }
  }
  $("choice-row").hidden = select.options.length < 2;
  restore();
  describe();
  $("write-button").disabled = false;
}

// Until the poets are listed, ask again with growing pauses: the server may still be starting, or be restarted.
async function loadModelsUntilListed() {
  for (let pause = 1; ; pause = Math.min(2 * pause, 16)) {
    try {
      await loadModels();
      showError("");
      return;
    } catch (error) {
      showError(`Could not list the poets served (${reason(error)}); asking again in ${pause} s.`);
      await new Promise((resolve) => setTimeout(resolve, pause * 1000));
    }
  }
}

function reason(error) {
  // fetch rejects with a TypeError when no answer came at all: the server is not running, or not reachable.
  return error instanceof TypeError ? "the server did not answer: is neuralda serve still running?" : error.message;
}

function save() {
  const choices = { choice: $("choice").value, start: $("start").value, form: $("form").value };
  for (const id of KNOBS) choices[id] = $(id).value;
  try {
    localStorage.setItem(SAVED, JSON.stringify(choices));
  } catch {} // storage turned off: the page works without it
}

function restore() {
  let choices;
  try {
    choices = JSON.parse(localStorage.getItem(SAVED)) || {};
  } catch {
    return;
  }
  const has = (select, value) => [...select.options].some((o) => o.value === value);
  if (has($("choice"), choices.choice)) $("choice").value = choices.choice; // a run no longer served: the default
  if (has($("form"), choices.form)) $("form").value = choices.form;
  if (typeof choices.start === "string") $("start").value = choices.start;
  for (const id of KNOBS) if (choices[id] != null) $(id).value = choices[id]; // a range clamps what is out of it
  KNOBS.forEach(showKnob);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// The page speaks English; a poem and its start word are in the poet's language, where the corpus gave it: screen
// readers pronounce them, and browsers choose Chinese or Japanese forms of a character, by it.
function setLang(element, lang) {
  if (lang) element.lang = lang;
  else element.removeAttribute("lang");
}

// Stanzas are separated by a blank line; each line is its own block so long lines wrap with a hanging indent.
function showPoem(body, asked) {
  poemText = body.poem;
  const stanzas = $("stanzas");
  stanzas.replaceChildren();
  setLang(stanzas, runs.find((r) => r.name === body.run)?.lang);
  let n = 0;
  for (const stanza of body.poem.split(/\n\s*\n/)) {
    const block = document.createElement("p");
    block.className = "stanza";
    block.dir = "auto"; // a right-to-left poem (Arabic, Hebrew) reads from the right, its marks at the right ends
    for (const line of stanza.split("\n")) {
      const span = document.createElement("span");
      span.className = "line";
      span.style.setProperty("--n", n++);
      span.textContent = line;
      block.append(span);
    }
    stanzas.append(block);
  }
  const words = `${body.words} ${body.words === 1 ? "word" : "words"}`;
  let ending = body.ended ? "" : " · stopped at the length asked";
  if (body.words > asked) ending = " · its start alone is longer than the length asked";
  $("about").textContent = `${body.run} · ${body.checkpoint} · ${words} · seed ${body.seed} · ${Math.round(body.ms)} ms${ending}`;
  $("poem").hidden = false;
  $("poem").classList.remove("stale");
  $("status").textContent = `A poem of ${words}, below.`;
}

// The answer to one request: a 503 that says when to ask again is asked again, a few times.
async function generate(request, signal) {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch("api/generate", { ...request, signal });
    const body = await response.json().catch(() => ({}));
    const wait = Number(response.headers.get("Retry-After"));
    if (response.status === 503 && attempt < BUSY_RETRIES && wait > 0 && wait <= 10) {
      $("status").textContent = "The server is busy; asking again.";
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      continue;
    }
    if (!response.ok) throw new Error(body.detail || `the server answered ${response.status}`);
    if (typeof body.poem !== "string") throw new Error("the server's answer holds no poem");
    return body;
  }
}

async function write(event) {
  event.preventDefault();
  if (writing) return; // one poem at a time: Enter again while it is written does nothing
  const { run, checkpoint } = chosen();
  const button = $("write-button");
  const focused = document.activeElement === button; // a disabled button loses the focus: the keyboard's place
  const asked = Number($("words").value);
  writing = new AbortController();
  button.disabled = true;
  button.textContent = "Writing…";
  $("stop").hidden = false;
  if (focused) $("stop").focus();
  showError("");
  $("status").textContent = "Writing…";
  $("poem").setAttribute("aria-busy", "true");
  document.querySelector("main").classList.add("busy");
  save();
  try {
    const body = await generate(
      {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          start: $("start").value.trim() || run.start, // an empty box begins with the word it shows, or anywhere
          words: asked,
          temperature: Number($("temperature").value),
          top_p: Number($("top_p").value),
          form: $("form").value,
          run: run.name,
          checkpoint: checkpoint.name,
        }),
      },
      writing.signal,
    );
    showPoem(body, asked);
  } catch (error) {
    const stopped = error.name === "AbortError";
    showError(stopped ? "" : reason(error));
    $("status").textContent = stopped ? "Stopped." : "";
    $("poem").classList.add("stale"); // the poem shown is not the answer to this request
  } finally {
    const stopFocused = document.activeElement === $("stop");
    writing = null;
    button.disabled = false;
    button.textContent = "Write";
    $("stop").hidden = true;
    if (focused || stopFocused) button.focus();
    $("poem").removeAttribute("aria-busy");
    document.querySelector("main").classList.remove("busy");
  }
}

// The clipboard API needs a secure context (localhost is one); elsewhere fall back to selecting the text.
async function copy() {
  const button = $("copy");
  let copied = true;
  try {
    await navigator.clipboard.writeText(poemText);
  } catch {
    const area = document.createElement("textarea");
    area.value = poemText;
    document.body.append(area);
    area.select();
    copied = document.execCommand("copy");
    area.remove();
    button.focus(); // the text area took the focus: give it back
  }
  button.textContent = copied ? "Copied" : "Could not copy";
  $("status").textContent = copied ? "Poem copied." : "Could not copy: select the poem and copy it.";
  setTimeout(() => (button.textContent = "Copy"), 1500);
}

function showKnob(id) {
  const input = $(id);
  const value = id === "words" ? input.value : Number(input.value).toFixed(2);
  $(`${id}-out`).textContent = value;
  if (id === "words") input.setAttribute("aria-valuetext", `${value} words`);
}

for (const id of KNOBS) {
  $(id).addEventListener("input", () => showKnob(id));
  showKnob(id);
}
$("choice").addEventListener("change", describe);
$("write").addEventListener("submit", write);
$("write").addEventListener("change", save);
$("stop").addEventListener("click", () => writing?.abort());
$("copy").addEventListener("click", copy);
loadModelsUntilListed();
