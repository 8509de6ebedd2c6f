// The page's logic: everything numeric happens in Rust (web/src/lib.rs, compiled to
// WebAssembly by .ci/browser into web/pkg). Query parameters:
//   ?ci             run the golden and ONNX cases at once and POST the report to /result (web/serve.py)
//   ?run            run the golden and ONNX cases at once and POST the report (for a screenshot: a
//                   request to /hold stays open until then, so headless Chromium waits)
//   model=DIR       the sentiment model: DIR/sentiment.safetensors + DIR/vocab.txt (default
//                   /target/sentiment, none with ?ci); with ?ci the page also scores a fixed
//                   review and requires the GPU and CPU probabilities to agree
import init, { start, check_case, check_onnx, score_review } from "./pkg/wgpu_rnn_web.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const CI = params.has("ci");
// GPU against CPU reference on one probability: f32 sums in another order.
const SCORE_TOLERANCE = 1e-4;
const REVIEW = "This film was a delight from start to finish. The acting is superb, the story moving, and I would gladly watch it again!";

const RUN = params.has("run");
if (RUN) fetch("/hold").catch(() => {});

let model = null; // { bytes: Uint8Array, vocab: string, name: string }

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function loadModel(dir) {
  const [bytes, vocab] = await Promise.all([
    fetchBytes(`${dir}/sentiment.safetensors`),
    fetch(`${dir}/vocab.txt`).then((r) => { if (!r.ok) throw new Error(`${dir}/vocab.txt: HTTP ${r.status}`); return r.text(); }),
  ]);
  model = { bytes, vocab, name: `${dir}/sentiment.safetensors` };
  $("model").textContent = `${model.name} (${(bytes.length / 1048576).toFixed(1)} MiB)`;
  $("score").disabled = false;
}

async function score(text) {
  const r = JSON.parse(await score_review(model.bytes, model.vocab, text));
  const pct = (p) => (100 * p).toFixed(2) + "%";
  const diff = Math.abs(r.gpu - r.cpu);
  $("verdict").innerHTML =
    `<div class="score">${r.gpu >= 0.5 ? "positive" : "negative"}: P(positive) = <b>${pct(r.gpu)}</b> on the GPU,
     ${pct(r.cpu)} on the CPU reference (|difference| ${diff.toExponential(1)})</div>
     <div class="muted">${r.tokens} tokens (${r.unknown} outside the vocabulary); ${r.config}; ${r.device}</div>`;
  return { ...r, diff, pass: diff <= SCORE_TOLERANCE };
}

async function goldenCases() {
  const names = await (await fetch("/golden-cases.json")).json();
  const table = $("cases");
  table.innerHTML = "<tr><th>case</th><th>result</th><th>tensors</th><th>worst ratio</th><th>worst tensor</th></tr>";
  const results = [];
  for (const path of names) {
    const name = path.split("/").pop().replace(".safetensors", "");
    const row = table.insertRow();
    row.insertCell().textContent = name;
    const cell = row.insertCell();
    cell.textContent = "running";
    let r;
    try {
      r = JSON.parse(await check_case(name, await fetchBytes("/" + path)));
    } catch (e) {
      r = { case: name, pass: false, error: String(e), tensors: [] };
    }
    results.push(r);
    cell.textContent = r.pass ? "pass" : "FAIL";
    cell.className = r.pass ? "pass" : "fail";
    const rank = (t) => (t.worst_ratio < 0 ? Infinity : t.worst_ratio); // -1: missing or NaN
    const worst = r.tensors.reduce((a, t) => (a === null || rank(t) > rank(a) ? t : a), null);
    row.insertCell().textContent = r.error ?? r.tensors.length;
    row.insertCell().textContent = worst ? (worst.worst_ratio < 0 ? "missing/NaN" : worst.worst_ratio.toFixed(3)) : "-";
    row.insertCell().textContent = worst ? worst.name : "-";
  }
  const passed = results.filter((r) => r.pass).length;
  $("summary").innerHTML = `<span class="${passed === results.length ? "pass" : "fail"}">${passed} / ${results.length} cases pass</span>`;
  return results;
}

// Concatenates byte arrays; returns the bytes and each part's length.
function concat(parts) {
  const lens = new Uint32Array(parts.map((p) => p.length));
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return [all, lens];
}

async function onnxCases() {
  const cases = await (await fetch("/onnx-cases.json")).json();
  const table = $("onnx-cases");
  table.innerHTML = "<tr><th>case</th><th>result</th><th>outputs</th><th>max |got - want|</th></tr>";
  const results = [];
  for (const c of cases) {
    const row = table.insertRow();
    row.insertCell().textContent = c.name;
    const cell = row.insertCell();
    cell.textContent = "running";
    let r;
    try {
      const [modelBytes, ins, outs] = await Promise.all([
        fetchBytes("/" + c.model),
        Promise.all(c.inputs.map((p) => fetchBytes("/" + p))),
        Promise.all(c.outputs.map((p) => fetchBytes("/" + p))),
      ]);
      const [inBytes, inLens] = concat(ins);
      const [outBytes, outLens] = concat(outs);
      r = JSON.parse(await check_onnx(c.name, modelBytes, inBytes, inLens, outBytes, outLens));
    } catch (e) {
      r = { case: c.name, pass: false, error: String(e), outputs: [] };
    }
    results.push(r);
    cell.textContent = r.pass ? "pass" : "FAIL";
    cell.className = r.pass ? "pass" : "fail";
    row.insertCell().textContent = r.error ?? r.outputs.map((o) => o.name).join(", ");
    row.insertCell().textContent = r.outputs.length ? Math.max(...r.outputs.map((o) => (o.max_abs < 0 ? Infinity : o.max_abs))).toExponential(1) : "-";
  }
  const passed = results.filter((r) => r.pass).length;
  $("onnx-summary").innerHTML = `<span class="${passed === results.length ? "pass" : "fail"}">${passed} / ${results.length} cases pass</span>`;
  return results;
}

async function main() {
  const report = { pass: false, device: null, cases: [], onnx: [], sentiment: null, error: null };
  try {
    await init();
    if (!navigator.gpu) throw new Error("this browser has no WebGPU (navigator.gpu is undefined)");
    report.device = await start();
    $("device").textContent = "GPU: " + report.device;
    $("golden").disabled = false;
    $("golden").onclick = () => goldenCases().catch((e) => ($("summary").textContent = String(e)));
    $("onnx").disabled = false;
    $("onnx").onclick = () => onnxCases().catch((e) => ($("onnx-summary").textContent = String(e)));
    $("score").onclick = () => score($("review").value).catch((e) => ($("verdict").textContent = String(e)));
    $("files").onchange = async (ev) => {
      const files = [...ev.target.files];
      const st = files.find((f) => f.name.endsWith(".safetensors"));
      const vt = files.find((f) => f.name.endsWith(".txt"));
      if (!st || !vt) { $("model").textContent = "choose a .safetensors model and its vocab.txt together"; return; }
      model = { bytes: new Uint8Array(await st.arrayBuffer()), vocab: await vt.text(), name: st.name };
      $("model").textContent = `${st.name} + ${vt.name}`;
      $("score").disabled = false;
    };
    const dir = params.get("model") ?? (CI ? null : "/target/sentiment");
    if (dir) {
      try {
        await loadModel(dir);
        report.sentiment = await score(REVIEW);
      } catch (e) {
        $("model").textContent = `${e} (train it first: cargo run --release --example sentiment)`;
        if (CI) throw e;
      }
    }
    if (CI || RUN) {
      report.cases = await goldenCases();
      report.onnx = await onnxCases();
    }
    if (CI || RUN) {
      report.pass = report.cases.length > 0 && report.cases.every((r) => r.pass) && report.onnx.length > 0 && report.onnx.every((r) => r.pass) && (report.sentiment === null || report.sentiment.pass);
    }
  } catch (e) {
    report.error = String(e);
    $("device").textContent = "error: " + e;
  }
  if (CI || RUN) {
    document.title = report.pass ? "PASS" : "FAIL";
    await fetch("/result", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(report) });
  }
}

main();
