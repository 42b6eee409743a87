// The chain explorer's page (ppl_ecmh/analysis/explorer.py writes the data beside this script).
// Draws are stored as differences from the draw before; only the draw on screen is rendered.
"use strict";

(async function main() {
  const app = document.getElementById("app");
  const data = JSON.parse(document.getElementById("data").textContent);
  const escape = (text) => String(text).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;",
    '"': "&quot;", "'": "&#39;"}[c]));
  if (document.body.dataset.view === "eval") {
    evalView(app, data, escape);
    return;
  }
  const runs = await Promise.all(data.map(unpack));
  chainView(app, runs, escape);
})();

async function inflate(base64, Type) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Type(await new Response(stream).arrayBuffer());
}

async function unpack(run) {
  const [index, tokens, entropy] = await Promise.all([inflate(run.index, Int32Array), inflate(run.tokens, Int32Array),
    inflate(run.entropy, Uint8Array)]);
  return Object.assign(run, {index, tokens, entropy, cache: new Map()});
}

// The tokens and entropies of draw `draw` of `chain`: the draw before it up to their common
// prefix, then what the draw wrote. Walks forward from the last draw rebuilt for the chain.
function drawSequence(run, chain, draw) {
  let start = 0, tokens = new Int32Array(0), entropy = new Uint8Array(0);
  const cached = run.cache.get(chain);
  if (cached && cached.draw <= draw) ({draw: start, tokens, entropy} = cached), start += 1;
  for (let k = start; k <= draw; k++) {
    const at = (chain * run.draws + k) * 6;
    ({tokens, entropy} = extend(run, tokens, entropy, run.index[at], run.index[at + 1], run.index[at + 2]));
  }
  run.cache.set(chain, {draw, tokens, entropy});
  return {tokens, entropy};
}

function extend(run, tokens, entropy, shared, offset, count) {
  const newTokens = new Int32Array(shared + count), newEntropy = new Uint8Array(shared + count);
  newTokens.set(tokens.subarray(0, shared));
  newTokens.set(run.tokens.subarray(offset, offset + count), shared);
  newEntropy.set(entropy.subarray(0, shared));
  newEntropy.set(run.entropy.subarray(offset, offset + count), shared);
  return {tokens: newTokens, entropy: newEntropy};
}

// What the draw's last step did not keep: the draw up to their common prefix, then its own tokens.
function unkeptSequence(run, chain, draw, sequence) {
  const at = (chain * run.draws + draw) * 6 + 3;
  return extend(run, sequence.tokens, sequence.entropy, run.index[at], run.index[at + 1], run.index[at + 2]);
}

function entropyColour(nats) {
  const t = Math.min(nats / 4, 1);
  return `hsl(${Math.round(55 - 55 * t)},100%,${Math.round(97 - 37 * t)}%)`;
}

function pieceText(run, id) {
  const piece = run.pieces[id];
  if (piece === undefined) return `⟨${id}⟩`;
  return piece.replace(/\n/g, "↵\n").replace(/\t/g, "→\t");
}

// Spans of tokens [from, to) of a sequence, a cut marker before token `cut` when it lies in the range.
function tokenSpans(run, sequence, from, to, cut, escape) {
  const parts = [];
  for (let i = from; i < to; i++) {
    if (i === cut) parts.push("<span class='cut-marker' title='cut: the step kept the tokens before'></span>");
    const nats = sequence.entropy[i] * run.entropyStep, id = sequence.tokens[i];
    parts.push(`<span class='tok${i >= cut ? " rewritten" : ""}' data-i='${i}' data-id='${id}' style='background:${entropyColour(nats)}' ` +
      `title='token ${i} · id ${id} · entropy ${nats.toFixed(2)} nats'>${escape(pieceText(run, id))}</span>`);
  }
  if (cut === to) parts.push("<span class='cut-marker' title='cut at the end'></span>");
  return parts.join("");
}

function chainView(app, runs, escape) {
  const state = {run: 0, chain: 0, draw: 0};
  const runOptions = runs.map((run, i) => `<option value='${i}'>${escape(run.name)}</option>`).join("");
  app.innerHTML = `
    <h1>ppl-ecmh chain explorer</h1>
    <div class='meta' id='meta'></div>
    <div class='controls'>
      <label ${runs.length > 1 ? "" : "hidden"}>sampler <select id='run'>${runOptions}</select></label>
      <label>chain <input type='number' id='chain' min='0' value='0'></label>
      <label>draw <input type='range' id='draw-slider' min='0' value='0'> <input type='number' id='draw' min='0' value='0'></label>
      <span class='legend'>entropy 0 <span class='swatch' style='background:${entropyColour(0)}'></span>
        <span class='swatch' style='background:${entropyColour(1)}'></span><span class='swatch' style='background:${entropyColour(2)}'></span>
        <span class='swatch' style='background:${entropyColour(4)}'></span> 4+ nats</span>
    </div>
    <div class='keys'><kbd>←</kbd><kbd>→</kbd> draw · <kbd>↑</kbd><kbd>↓</kbd> chain · <kbd>n</kbd>/<kbd>p</kbd> next/previous
      rejected step · <kbd>Home</kbd><kbd>End</kbd> first/last draw · click the trace to open a draw</div>
    <svg id='trace' role='img' aria-label='alpha log p of every chain'></svg>
    <div id='step'></div>
    <div class='tokens' id='completion'></div>
    <div class='sides' id='sides'>
      <div class='side'><h3>current suffix (before the step)<span class='badge' id='current-badge'></span></h3>
        <div class='tokens' id='suffix-current'></div></div>
      <div class='side'><h3>proposed suffix<span class='badge' id='proposed-badge'></span></h3>
        <div class='tokens' id='suffix-proposed'></div></div>
    </div>`;
  const $ = (id) => document.getElementById(id);

  // The trace in the element's own pixels (a stretched view box would draw the marker as an ellipse).
  function drawTrace() {
    const run = runs[state.run], values = run.logTarget.flat().filter(Number.isFinite);
    const low = Math.min(...values), high = Math.max(...values), span = high - low || 1;
    const width = $("trace").clientWidth || 1000, height = $("trace").clientHeight || 200;
    $("trace").setAttribute("viewBox", `0 0 ${width} ${height}`);
    const x = (d) => 48 + (run.draws > 1 ? d / (run.draws - 1) : 0.5) * (width - 60);
    const y = (v) => height - 22 - ((v - low) / span) * (height - 40);
    const lines = run.logTarget.map((row, c) => `<polyline class='line${c === state.chain ? " selected" : ""}' ` +
      `data-chain='${c}' points='${row.map((v, d) => `${x(d).toFixed(1)},${y(v).toFixed(1)}`).join(" ")}'/>`);
    const selected = lines.splice(state.chain, 1);
    const v = run.logTarget[state.chain][state.draw];
    $("trace").innerHTML = lines.join("") + selected.join("") +
      `<text class='axis' x='4' y='${y(high) + 4}'>${high.toFixed(1)}</text>` +
      `<text class='axis' x='4' y='${y(low) + 4}'>${low.toFixed(1)}</text>` +
      `<text class='axis' x='48' y='12'>alpha log p of every chain, the selected one in blue</text>` +
      `<text class='axis' x='${width - 8}' y='${height - 6}' text-anchor='end'>draw ${run.draws - 1}</text>` +
      `<text class='axis' x='48' y='${height - 6}'>draw 0</text>` +
      `<circle class='marker' cx='${x(state.draw)}' cy='${y(v)}' r='5'/>`;
    run.traceScale = {x, y, width, height};
  }

  function render() {
    const run = runs[state.run], {chain, draw} = state;
    const sequence = drawSequence(run, chain, draw), length = sequence.tokens.length;
    const cut = run.cut[chain][draw], accepted = run.accepted[chain][draw];
    const probability = run.acceptProb[chain][draw];
    const settings = Object.entries(run.settings).filter(([, value]) => value !== null && typeof value !== "object")
      .map(([key, value]) => `${key} ${value}`).join(" · ");
    $("meta").innerHTML = `${escape(run.model)} · ${escape(settings)}<br>prompt: ${escape(run.prompt)}`;
    for (const [id, max] of [["chain", run.chains - 1], ["draw", run.draws - 1], ["draw-slider", run.draws - 1]]) {
      $(id).max = max;
    }
    $("chain").value = chain; $("draw").value = draw; $("draw-slider").value = draw;
    const decision = accepted ? "accepted" : "rejected";
    const cutEntropy = cut < length ? ` (entropy there ${(sequence.entropy[cut] * run.entropyStep).toFixed(2)} nats)` : "";
    $("step").innerHTML = `chain ${chain}, draw ${draw} of ${run.draws} · alpha log p ${run.logTarget[chain][draw].toFixed(2)} · ` +
      `${length} tokens<br>last step: cut at token <b id='cut-position'>${cut}</b>${cutEntropy} · acceptance probability ` +
      `<b id='accept-prob'>${probability.toFixed(3)}</b> · <span class='decision ${decision}' id='decision'>${decision}</span>`;
    $("completion").innerHTML = tokenSpans(run, sequence, 0, length, cut, escape);
    $("sides").hidden = !run.hasUnkept;
    if (run.hasUnkept) {
      const other = unkeptSequence(run, chain, draw, sequence);
      const [current, proposed] = accepted ? [other, sequence] : [sequence, other];
      $("suffix-current").innerHTML = tokenSpans(run, current, cut, current.tokens.length, cut, escape) ||
        "<span class='note'>(empty)</span>";
      $("suffix-proposed").innerHTML = tokenSpans(run, proposed, cut, proposed.tokens.length, cut, escape) ||
        "<span class='note'>(empty)</span>";
      $("current-badge").textContent = accepted ? "replaced" : "kept";
      $("proposed-badge").textContent = accepted ? "kept" : "not kept";
      $("current-badge").className = "badge" + (accepted ? "" : " kept");
      $("proposed-badge").className = "badge" + (accepted ? " kept" : "");
    }
    drawTrace();
  }

  function select(run, chain, draw) {
    const r = runs[run];
    state.run = run;
    state.chain = Math.max(0, Math.min(r.chains - 1, chain));
    state.draw = Math.max(0, Math.min(r.draws - 1, draw));
    render();
  }

  function rejected(step) {
    const run = runs[state.run];
    for (let d = state.draw + step; d >= 0 && d < run.draws; d += step) {
      if (!run.accepted[state.chain][d]) return select(state.run, state.chain, d);
    }
  }

  $("run").addEventListener("change", (e) => select(Number(e.target.value), 0, 0));
  $("chain").addEventListener("change", (e) => select(state.run, Number(e.target.value), state.draw));
  $("draw").addEventListener("change", (e) => select(state.run, state.chain, Number(e.target.value)));
  $("draw-slider").addEventListener("input", (e) => select(state.run, state.chain, Number(e.target.value)));
  $("trace").addEventListener("click", (event) => {
    const run = runs[state.run], box = $("trace").getBoundingClientRect(), {width} = run.traceScale;
    const fx = event.clientX - box.left, fy = event.clientY - box.top;
    const draw = Math.round(((fx - 48) / (width - 60)) * (run.draws - 1));
    const d = Math.max(0, Math.min(run.draws - 1, draw));
    let best = state.chain, distance = Infinity;
    run.logTarget.forEach((row, c) => {
      const gap = Math.abs(run.traceScale.y(row[d]) - fy);
      if (gap < distance) [best, distance] = [c, gap];
    });
    select(state.run, best, d);
  });
  document.addEventListener("keydown", (event) => {
    if (["INPUT", "SELECT"].includes(document.activeElement.tagName) && document.activeElement.type !== "range") return;
    const moves = {ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0]};
    if (event.key in moves) {
      const [dc, dd] = moves[event.key];
      select(state.run, state.chain + dc, state.draw + dd);
    } else if (event.key === "Home") select(state.run, state.chain, 0);
    else if (event.key === "End") select(state.run, state.chain, Infinity);
    else if (event.key === "n") rejected(1);
    else if (event.key === "p") rejected(-1);
    else return;
    event.preventDefault();
  });
  window.addEventListener("resize", drawTrace);
  window.explorer = {state, select};
  render();
  document.body.dataset.ready = "true";
}

function evalView(app, data, escape) {
  const samplers = [...new Set(data.problems.flatMap((p) => p.records.map((r) => `${r.sampler} · seed ${r.seed}`)))];
  const passes = Object.fromEntries(samplers.map((s) => [s, 0]));
  for (const problem of data.problems) {
    for (const r of problem.records) passes[`${r.sampler} · seed ${r.seed}`] += r.correct ? 1 : 0;
  }
  const total = data.problems.length;
  app.innerHTML = `<h1>${escape(data.title)}</h1>
    <table class='totals'><tr><th>sampler</th><th>passed</th></tr>${samplers.map((s) =>
      `<tr><td>${escape(s)}</td><td>${passes[s]} / ${total}</td></tr>`).join("")}</table>
    <label class='controls'><input type='checkbox' id='disagree'> only problems where the grades differ</label>
    <div id='problems'></div>`;
  const list = document.getElementById("problems");
  const differs = (p) => new Set(p.records.map((r) => r.correct)).size > 1;
  function show() {
    const only = document.getElementById("disagree").checked;
    list.innerHTML = data.problems.map((p, i) => (only && !differs(p)) ? "" :
      `<details class='problem' data-index='${i}'><summary>${escape(p.id)} ${p.records.map((r) =>
        `<span class='grade ${r.correct ? "pass" : "fail"}' title='${escape(r.sampler)} seed ${r.seed}'>` +
        `${escape(r.sampler)}<sub>${r.seed}</sub> ${r.correct ? "✓" : "✗"}</span>`).join("")}</summary>` +
      "<div class='columns'></div></details>").join("");
  }
  list.addEventListener("toggle", (event) => {  // a problem's completions are rendered when it is opened
    const element = event.target, columns = element.querySelector(".columns");
    if (!element.open || columns.childElementCount) return;
    columns.innerHTML = data.problems[Number(element.dataset.index)].records.map((r) =>
      `<div><b>${escape(r.sampler)}</b> seed ${r.seed} <span class='grade ${r.correct ? "pass" : "fail"}'>` +
      `${r.correct ? "pass" : "fail"}</span>${answerView(r.answer ?? "", escape)}` +
      `<pre>${escape(r.completion ?? "")}</pre></div>`).join("");
  }, true);
  document.getElementById("disagree").addEventListener("change", show);
  show();
  document.body.dataset.ready = "true";
}

// What was graded: inline when short (a number), folded when it is a whole program.
function answerView(answer, escape) {
  if (answer.length <= 80 && !answer.includes("\n")) return `<div class='note'>graded answer: ${escape(answer)}</div>`;
  return `<details class='note'><summary>graded answer (${answer.split("\n").length} lines)</summary>` +
    `<pre>${escape(answer)}</pre></details>`;
}
