// The page's few behaviours: list the poets served, ask the API for a poem, show it line by line, copy it.
"use strict";

const $ = (id) => document.getElementById(id);
let runs = [];
let poemText = "";

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

async function loadModels() {
  const response = await fetch("api/models");
  if (!response.ok) throw new Error(`the server answered ${response.status}`);
  runs = (await response.json()).runs;
  const select = $("choice");
  for (const run of runs) {
    for (const c of run.checkpoints) {
      const option = new Option(`${run.name} · ${c.name}${c.epoch != null ? ` (epoch ${c.epoch})` : ""}`);
      option.value = JSON.stringify([run.name, c.name]);
      option.selected = c.name === run.default_checkpoint && run === runs[0];
      select.add(option);
    }
  }
  $("choice-row").hidden = select.options.length < 2;
  describe();
  $("write-button").disabled = false;
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
function showPoem(body) {
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
  const ending = body.ended ? "" : " · stopped at the length asked";
  const words = `${body.words} ${body.words === 1 ? "word" : "words"}`;
  $("about").textContent = `${words} · seed ${body.seed} · ${Math.round(body.ms)} ms${ending}`;
  $("poem").hidden = false;
}

async function write(event) {
  event.preventDefault();
  const { run, checkpoint } = chosen();
  const button = $("write-button");
  const focused = document.activeElement === button; // a disabled button loses the focus: the keyboard's place
  button.disabled = true;
  button.textContent = "Writing…";
  document.querySelector("main").classList.add("busy");
  try {
    const response = await fetch("api/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        start: $("start").value.trim() || run.start, // an empty box begins with the word it shows, or anywhere
        words: Number($("words").value),
        temperature: Number($("temperature").value),
        top_p: Number($("top_p").value),
        form: $("form").value,
        run: run.name,
        checkpoint: checkpoint.name,
      }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.detail || `the server answered ${response.status}`);
    if (typeof body.poem !== "string") throw new Error("the server's answer holds no poem");
    showError("");
    showPoem(body);
  } catch (error) {
    showError(error.message);
  } finally {
    button.disabled = false;
    button.textContent = "Write";
    if (focused) button.focus();
    document.querySelector("main").classList.remove("busy");
  }
}

// The clipboard API needs a secure context (localhost is one); elsewhere fall back to selecting the text.
async function copy() {
  const button = $("copy");
  try {
    await navigator.clipboard.writeText(poemText);
  } catch {
    const area = document.createElement("textarea");
    area.value = poemText;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "Copied";
  setTimeout(() => (button.textContent = "Copy"), 1500);
}

for (const id of ["temperature", "top_p", "words"]) {
  const input = $(id);
  const show = () => ($(`${id}-out`).textContent = id === "words" ? input.value : Number(input.value).toFixed(2));
  input.addEventListener("input", show);
  show();
}
$("choice").addEventListener("change", describe);
$("write").addEventListener("submit", write);
$("copy").addEventListener("click", copy);
loadModels().catch((error) => showError(`Could not list the poets served: ${error.message}`));
