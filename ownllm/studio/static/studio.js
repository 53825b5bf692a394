// ownllm studio: plain JS. Every text from a person, a file or a model goes in through textContent.
"use strict";

const I18N = {
  en: {},  // English is the text in index.html; keys below are for text made here
  zh: {
    run: "运行", apiKey: "API 密钥", step1: "1 · 数据", step2: "2 · 模型与计划", step3: "3 · 训练",
    step4: "4 · 报告与对话", step5: "5 · 导出", dataTitle: "你的数据", uploadFile: "上传文件",
    orPath: "或本机上的路径", format: "格式", columns: "列映射", dedup: "去重", pii: "个人信息",
    system: "系统提示（可选）", checkData: "检查数据", runName: "运行名称", createRun: "创建运行",
    reportTitle: "数据体检报告", rejected: "被拒绝的行", lengths: "每行的 token 数",
    examples: "渲染后的样例（高亮部分参与训练）", planTitle: "模型、方法与时间预算", model: "模型",
    customModel: "或模型文件夹", method: "方法", protect: "保持通用能力",
    tune: "在时间预算内自动调参（ownllm tune：尝试不同的学习率、秩、轮数和保护强度，最好的一次成为本次运行）", budget: "时间预算", epochs: "轮数", advanced: "高级",
    maxSteps: "最多步数", lr: "学习率", logSteps: "每 N 步记录", saveSteps: "每 N 步存检查点",
    makePlan: "查看计划", trainTitle: "训练", start: "开始训练", stop: "停止（保存检查点）", resume: "继续训练",
    state: "状态", trainLoss: "训练损失", valLoss: "验证损失", reportCard: "训练前后对比报告",
    evaluate: "在留出的测试集上评估", forgetting: "模型遗忘了部分基础模型会的内容：见通用问题保留数与通用文本困惑度。",
    chatTitle: "同时问两个模型", fullReport: "下载完整报告（HTML）", send: "提问", exportTitle: "导出与下载", quant: "GGUF 权重", export: "导出",
    newRun: "（新运行）", none: "无", rows: "行", total: "读取行数", kept: "保留", rejectedN: "拒绝",
    duplicates: "重复", split: "训练 / 验证 / 测试", tokens: "token（均值 / p95 / 最大）", truncated: "被截断",
    judged: "评判过的回答（成对 / 好 / 差）", judgedModels: "这些反馈评判的是多个模型的回答",
    reason: "原因", count: "数量", example: "示例", detected: "检测到的格式", fits: "可运行",
    notFits: "放不下", availableHere: "本机已有", needsDownload: "需下载", memory: "内存", hours: "时间",
    tokensPerSecond: "token/秒", cost: "费用", fitsBudget: "预算内", yes: "是", no: "否",
    running: "训练中", stopped: "已停止（可继续）", finished: "已完成", failed: "失败",
    died: "进程意外结束（可从检查点继续）", not_started: "未开始", step: "步", eta: "剩余",
    base: "基础模型", tuned: "微调后", metric: "指标", working: "处理中…", done: "完成",
    checks: "检查", files: "文件", download: "下载", passed: "通过", notPassed: "未通过",
    created: "已创建运行", needRun: "请先在第 1 步创建运行", needData: "请先上传文件或填写路径",
    memNow: "内存", waiting: "等待中", dedupNear: "近似重复也去掉", dedupExact: "仅去掉完全相同", dedupOff: "不去重",
    piiKeep: "保留", piiMask: "遮盖（邮箱、电话、证件号、卡号）",
    docsTitle: "从文档开始（PDF、Word、HTML、Markdown、文本）", docsUpload: "上传文档", docsPath: "或本机上的文件或文件夹",
    teacher: "老师模型（可选）：OpenAI 兼容地址或模型", teacherModel: "其模型名", perChunk: "每段问答对数",
    alsoText: "同时用原文训练", docsStart: "把文档变成数据", needDocs: "请先上传文档或填写路径",
    docsDocuments: "文档", docsFaq: "文档自带的问答对", docsProposed: "老师提出 / 保留的问答对", docsRows: "写出的行 / 事实",
    docsCovered: "有保留问答的段落", docsInputs: "下一步的数据", docsFailed: "文档处理失败",
    m_contains: "包含参考答案", m_exact_match: "完全一致", m_token_f1: "词元 F1", m_rouge_l: "ROUGE-L",
    m_bleu: "BLEU", m_test_loss: "测试集损失", m_perplexity: "困惑度", m_general_perplexity: "通用文本困惑度", m_general_kept: "通用问题答对数（基础模型答对的题中保留）",
    m_ms_per_token: "每个 token 的生成时间（毫秒，等长）",
    good: "好", bad: "不好", writeBetter: "写一个更好的回答", saveBetter: "保存更好的回答", goodAnswer: "好回答", badAnswer: "不好的回答",
    betterAnswer: "更好的回答", feedbackSaved: "已保存", feedbackRows: "条，在本运行的反馈中",
    learnTitle: "用这里给出的反馈继续训练（本运行的新阶段）：", learnStart: "从反馈中学习",
    learnStarted: "已开始：在第 3 步查看训练进度，完成后重新评估", learnBest: "最适合这些反馈的方法（有更好的回答时用 ORPO，否则 KTO）",
    trialsTitle: "自动调参的各次尝试", trialComplete: "训练到底", trialPruned: "提前停止（剪枝）", trialBest: "选中",
    trialsAxis: "每次尝试的得分：验证损失 + 2 × 通用漂移，越低越好", trialsOf: "次尝试", trialChosen: "选中第",
  },
};
let lang = localStorage.getItem("ownllm-lang") || (navigator.language.startsWith("zh") ? "zh" : "en");
const EN = {};  // English texts, read from the page once
const T = (key, fallback) => (lang === "zh" && I18N.zh[key]) || EN[key] || fallback || key;
Object.assign(EN, {
  newRun: "(new run)", none: "none", rows: "rows", total: "rows read", kept: "kept", rejectedN: "rejected",
  duplicates: "duplicates", split: "train / val / test", tokens: "tokens (mean / p95 / max)", truncated: "truncated",
  judged: "judged answers (pairs / good / bad)", judgedModels: "this feedback judged answers of several models",
  reason: "reason", count: "count", example: "example", detected: "format detected", fits: "fits",
  notFits: "does not fit", availableHere: "on this machine", needsDownload: "needs a download", memory: "memory",
  hours: "time", tokensPerSecond: "tokens/s", cost: "cost", fitsBudget: "fits the budget", yes: "yes", no: "no",
  running: "training", stopped: "stopped (can resume)", finished: "finished", failed: "failed",
  died: "the process ended unexpectedly (can resume from a checkpoint)", not_started: "not started", step: "step",
  eta: "left", base: "base model", tuned: "tuned", metric: "metric", working: "working…", done: "done",
  checks: "checks", files: "files", download: "download", passed: "passed", notPassed: "failed",
  created: "run created", needRun: "create a run in step 1 first", needData: "upload a file or give a path first",
  memNow: "memory", waiting: "waiting", needDocs: "upload documents or give a path first",
  docsDocuments: "documents", docsFaq: "FAQ pairs the documents state", docsProposed: "pairs the teacher proposed / kept",
  docsRows: "rows written / facts", docsCovered: "chunks with a kept pair", docsInputs: "data for the next step",
  docsFailed: "the documents job failed",
  m_contains: "contains the reference", m_exact_match: "exact match", m_token_f1: "token F1", m_rouge_l: "ROUGE-L",
  m_bleu: "BLEU", m_test_loss: "loss on the test answers", m_perplexity: "perplexity",
  m_general_perplexity: "general-text perplexity", m_ms_per_token: "ms per generated token (equal length)",
  m_general_kept: "general questions answered right (kept of the base model's)",
  trialsOf: "trials", trialChosen: "chosen: trial",
});

const $ = (id) => document.getElementById(id);
const state = { run: null, view: null, metrics: [], metricsSince: 0, uploaded: null, poll: null, docsPoll: null };

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function svgEl(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}
function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const key = $("api-key").value || sessionStorage.getItem("ownllm-key");
  if (key) headers.Authorization = "Bearer " + key;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const response = await fetch(path, { method: options.method || (options.body ? "POST" : "GET"), headers,
                                       body: options.body });
  if (response.status === 401) $("key-box").hidden = false;
  if (options.raw) {
    if (!response.ok) throw new Error(response.status + " " + response.statusText);
    return response;
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((data.error && data.error.message) || response.statusText);
  return data;
}
async function guarded(fn) {
  try { showError(""); return await fn(); } catch (e) { showError(e.message); return null; }
}

// -- language ---------------------------------------------------------------------------------------
function applyLanguage() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const node of document.querySelectorAll("[data-i18n]")) {
    const key = node.dataset.i18n;
    if (!(key in EN)) EN[key] = node.textContent;
    node.textContent = T(key);
  }
  $("lang").textContent = lang === "zh" ? "English" : "中文";
  for (const a of document.querySelectorAll(".answer")) a.dataset.label = T(a.classList.contains("base") ? "base" : "tuned");
  if (state.view) renderRun(state.view);
  renderModels();
}

// -- steps ------------------------------------------------------------------------------------------
function showStep(step) {
  for (const b of document.querySelectorAll("#steps button")) b.classList.toggle("active", b.dataset.step === step);
  for (const s of document.querySelectorAll(".step")) s.hidden = s.id !== "step-" + step;
}

// -- runs -------------------------------------------------------------------------------------------
async function loadRuns(select) {
  const { runs } = await api("/api/runs");
  const box = $("run-select");
  box.replaceChildren(el("option", T("newRun")));
  box.firstChild.value = "";
  for (const r of runs) {
    const o = el("option", r.name + " · " + T(r.training));
    o.value = r.name;
    box.append(o);
  }
  box.value = select !== undefined ? select : (state.run || "");
}
async function selectRun(name) {
  state.run = name || null;
  state.view = null;
  state.metrics = [];
  state.metricsSince = 0;
  $("chat-log").replaceChildren();
  if (!name) { renderRun(null); return; }
  await refresh();
  loadModels();
}
async function refresh() {
  if (!state.run) return;
  const view = await api("/api/runs/" + encodeURIComponent(state.run));
  const { rows } = await api(`/api/runs/${encodeURIComponent(state.run)}/metrics?since=${state.metricsSince}`);
  state.metrics.push(...rows);
  state.metricsSince += rows.length;
  state.view = view;
  const option = $("run-select").selectedOptions[0];
  if (option && option.value === view.name) option.textContent = view.name + " · " + T(view.training.state);
  renderRun(view);
  const busy = view.training.state === "running" || [view.eval_job, view.export_job].some((j) => j && j.state === "running");
  clearTimeout(state.poll);  // fast while something runs; slowly otherwise, so a terminal's training shows up
  const name = state.run;
  state.poll = setTimeout(() => { if (state.run === name) guarded(refresh); }, busy ? 1000 : 5000);
}
function renderRun(view) {
  $("report").hidden = !(view && view.report);
  if (view && view.report) renderReport(view.report);
  renderPlan(view && view.plan);
  renderTraining(view);
  renderEval(view);
  renderExports(view);
}

// -- step 1: data -----------------------------------------------------------------------------------
function dataOptions() {
  // state.uploaded: an uploaded file's path, or the files a documents job wrote
  const inputs = state.uploaded ? [].concat(state.uploaded) : [$("data-path").value.trim()].filter(Boolean);
  if (!inputs.length) throw new Error(T("needData"));
  return { inputs, format: $("format").value, columns: $("columns").value.trim() || null, dedup: $("dedup").value,
           pii: $("pii").value, system: $("system").value.trim() || null, model: chosenModel() };
}
async function upload() {
  const file = $("file").files[0];
  if (!file) return;
  $("data-busy").textContent = T("working");
  const r = await api("/api/upload", { body: file, headers: { "X-Filename": encodeURIComponent(file.name) } });
  state.uploaded = r.path;
  $("data-path").value = "";
  if (!$("run-name").value) $("run-name").value = file.name.replace(/\.[^.]*$/, "").replace(/[^\p{L}\p{N}_.\-]/gu, "-").slice(0, 60);
  $("data-busy").textContent = "";
}
async function inspect() {
  $("data-busy").textContent = T("working");
  try {
    const { report } = await api("/api/data/inspect", { json: dataOptions() });
    $("report").hidden = false;
    renderReport(report);
  } finally { $("data-busy").textContent = ""; }
}
async function createRun() {
  $("data-busy").textContent = T("working");
  try {
    const view = await api("/api/runs", { json: Object.assign({ name: $("run-name").value.trim() }, dataOptions()) });
    await loadRuns(view.name);
    await selectRun(view.name);
    $("data-busy").textContent = T("created") + ": " + view.path;
  } catch (e) { $("data-busy").textContent = ""; throw e; }
}
// step 1 from documents: `ownllm data from-docs` as a job; its rows become the data inputs
async function startDocs() {
  const files = [...$("docs-files").files];
  let inputs = [$("docs-path").value.trim()].filter(Boolean);
  $("docs-busy").textContent = T("working");
  try {
    if (files.length) {
      inputs = [];
      for (const file of files) {
        const r = await api("/api/upload", { body: file, headers: { "X-Filename": encodeURIComponent(file.name) } });
        inputs.push(r.path);
      }
    }
    if (!inputs.length) throw new Error(T("needDocs"));
    const teacher = $("teacher").value.trim() || null;
    const job = await api("/api/docs", { json: { inputs, teacher, teacher_model: $("teacher-model").value.trim() || null,
      per_chunk: Number($("per-chunk").value) || 3, also_text: $("also-text").checked, model: chosenModel() } });
    clearInterval(state.docsPoll);
    state.docsPoll = setInterval(() => guarded(() => pollDocs(job.id)), 1500);
  } catch (e) { $("docs-busy").textContent = ""; throw e; }
}
async function pollDocs(id) {
  const view = await api(`/api/docs/${encodeURIComponent(id)}`);
  const job = view.job;
  $("docs-log").hidden = !job.log_tail;
  $("docs-log").textContent = job.log_tail || "";
  if (job.state === "running") return;
  clearInterval(state.docsPoll);
  $("docs-busy").textContent = job.state === "done" ? T("done") : T("docsFailed");
  const r = view.report;
  if (!r) return;
  const t = r.teacher;
  const rows = [[T("docsDocuments"), r.documents.length], [T("docsFaq"), r.extracted_pairs],
                [T("docsRows"), `${r.rows} / ${r.facts}`]];
  if (t) rows.push([T("docsProposed"), `${t.proposed} / ${t.kept}`], [T("docsCovered"), `${t.chunks_covered} / ${t.chunks}`]);
  if (view.inputs.length) rows.push([T("docsInputs"), view.inputs.map((p) => p.split("/").pop()).join(", ")]);
  kvTable($("docs-report"), rows);
  $("docs-report").hidden = false;
  if (view.inputs.length && r.rows) {
    state.uploaded = view.inputs;
    $("data-path").value = "";
    if (!$("run-name").value) $("run-name").value = "docs-" + id.slice(0, 6);
  }
}

function kvTable(table, rows) {
  table.replaceChildren(...rows.map(([k, v]) => {
    const tr = el("tr");
    tr.append(el("th", k), el("td", v));
    return tr;
  }));
}
function judgedRows(p) {
  // preference data (pairs, good/bad labels, feedback): what each kind counts, and whose answers were judged
  if (!p) return [];
  const k = p.kinds, models = Object.entries(p.answers_by_model || {});
  const rows = [[T("judged"), `${k.pair} / ${k.good} / ${k.bad}`]];
  if (models.length > 1) rows.push([T("judgedModels"), models.map(([m, n]) => `${m} (${n})`).join(", ")]);
  return rows;
}
function renderReport(r) {
  $("report-format").textContent = `${T("detected")}: ${r.format} — ${r.format_reason}`;
  kvTable($("report-counts"), [
    [T("total"), r.total_rows], [T("kept"), r.kept_rows], [T("rejectedN"), r.rejected_rows],
    [T("duplicates"), `${r.duplicates_removed} (exact ${r.exact_duplicates}, near ${r.near_duplicates})`],
    [T("split"), `${r.splits.train} / ${r.splits.val} / ${r.splits.test}`],
    [T("tokens"), `${r.tokens.mean} / ${r.tokens.p95} / ${r.tokens.max}`], [T("truncated"), r.truncated_rows],
    ...judgedRows(r.preference),
  ]);
  const rej = $("report-rejected");
  const head = el("tr");
  head.append(el("th", T("reason")), el("th", T("count")), el("th", T("example")));
  const rows = Object.entries(r.rejected_by_reason || {}).map(([reason, n]) => {
    const tr = el("tr");
    const ex = (r.rejected_examples[reason] || []).map((e) => `${e.source}:${e.line} ${e.detail}`).join("\n");
    tr.append(el("td", reason), el("td", n), el("td", ex, "pre"));
    return tr;
  });
  rej.replaceChildren(head, ...(rows.length ? rows : [el("tr", T("none"))]));
  drawHistogram(r.length_histogram);
  const box = $("report-examples");
  box.replaceChildren(...(r.marked_examples || []).map(markedExample));
}
function markedExample(text) {
  // the report marks trained tokens with ⟦ ⟧; show them highlighted instead
  const pre = el("pre", undefined, "example");
  for (const [i, part] of text.split(/[⟦⟧]/).entries()) {
    if (part) pre.append(el("span", part, i % 2 ? "trained" : "context"));
  }
  return pre;
}
function drawHistogram(h) {
  const svg = $("histogram");
  svg.replaceChildren();
  if (!h) return;
  const W = 600, H = 140, top = Math.max(...h.counts, 1), bw = W / h.counts.length;
  h.counts.forEach((n, i) => {
    const bh = (n / top) * (H - 10);
    const bar = svgEl("rect", { x: i * bw + 1, y: H - bh, width: bw - 2, height: bh, class: "bar" });
    bar.append(svgEl("title"));
    bar.firstChild.textContent = `${h.edges[i]}–${h.edges[i + 1]}: ${n}`;
    svg.append(bar);
  });
  const label = svgEl("text", { x: 2, y: 156, class: "axis" });
  label.textContent = `0 … ${h.edges[h.edges.length - 1]} tokens`;
  svg.append(label);
}

// -- step 2: model and plan -------------------------------------------------------------------------
let MODELS = [];
async function loadModels() {
  const q = state.run ? "?run=" + encodeURIComponent(state.run) : "";
  MODELS = (await api("/api/models" + q)).models;
  renderModels();
}
function renderModels() {
  const box = $("model");
  const keep = box.value || "smollm2-135m";
  box.replaceChildren(...MODELS.map((m) => {
    const o = el("option", `${m.alias} · ${(m.params / 1e9).toFixed(2)}B · ${m.fits ? T("fits") : T("notFits")}` +
                             ` · ${m.available ? T("availableHere") : T("needsDownload")}`);
    o.value = m.alias;
    return o;
  }));
  box.value = keep;
}
function chosenModel() {
  return $("model-path").value.trim() || $("model").value || "smollm2-135m";
}
function planRequest() {
  return { model: chosenModel(), method: $("method").value, time_budget: $("budget").value.trim() || null,
           epochs: Number($("epochs").value) || null,  // empty: chosen from the data's size
           protect: $("protect").value || "default" };
}
async function makePlan() {
  if (!state.run) throw new Error(T("needRun"));
  renderPlan(await api(`/api/runs/${encodeURIComponent(state.run)}/plan`, { json: planRequest() }));
}
function renderPlan(p) {
  $("plan-out").hidden = !p;
  if (!p) return;
  const rec = p.recommendation || {};
  kvTable($("plan-table"), [
    [T("model"), `${p.model} · ${p.method} · ${p.hardware} (${p.precision})`],
    [T("memory"), `${p.memory_gb.total.toFixed(2)} GB / ${p.memory_available_gb} GB · ${p.fits_in_memory ? T("fits") : T("notFits")}`],
    [T("hours"), `${formatSeconds(p.hours * 3600)} (${p.epochs} ${T("epochs")})`],
    [T("tokensPerSecond"), p.tokens_per_second], [T("cost"), `$${p.cost_usd}`],
    [T("fitsBudget"), p.fits_in_budget === null ? "—" : p.fits_in_budget ? T("yes") : T("no")],
  ]);
  $("plan-note").textContent = rec.note || rec.why || "";
  $("plan-text").textContent = [p.text || ""].concat((p.export_notes || []).map((n) => "export: " + n)).join("\n");
}

// -- step 3: training -------------------------------------------------------------------------------
async function startTraining() {
  if (!state.run) throw new Error(T("needRun"));
  const body = planRequest();
  for (const [id, key] of [["max-steps", "max_steps"], ["logging-steps", "logging_steps"], ["save-steps", "save_steps"]]) {
    if ($(id).value) body[key] = Number($(id).value);
  }
  if ($("lr").value.trim()) body.lr = Number($("lr").value);
  const route = $("tune").checked ? "tune" : "train";  // tune: trials within the budget, the best becomes the run
  await api(`/api/runs/${encodeURIComponent(state.run)}/${route}`, { json: body });
  await refresh();
}
async function runAction(action) {
  await api(`/api/runs/${encodeURIComponent(state.run)}/${action}`, { method: "POST" });
  await refresh();
}
function renderTraining(view) {
  const t = view ? view.training : null;
  const s = t ? t.state : "not_started";
  $("train-state").textContent = T(s);
  $("train-state").dataset.state = s;
  $("train").disabled = !view || s === "running";
  $("stop").disabled = s !== "running";
  $("resume").disabled = !(t && t.resumable);
  const st = t && t.status;
  const parts = [];
  if (st) {
    parts.push(`${T("step")} ${st.step} / ${st.max_steps}`);
    if (st.tokens_per_second) parts.push(`${Math.round(st.tokens_per_second)} ${T("tokensPerSecond")}`);
    if (s === "running" && st.eta_seconds !== null) parts.push(`${T("eta")} ${formatSeconds(st.eta_seconds)}`);
    const mem = st.memory_mb || {};
    const m = [mem.cpu_rss && `CPU ${Math.round(mem.cpu_rss)} MB`, mem.gpu_allocated && `GPU ${Math.round(mem.gpu_allocated)} MB`];
    if (m.some(Boolean)) parts.push(`${T("memNow")} ${m.filter(Boolean).join(", ")}`);
  }
  $("train-progress").textContent = parts.join(" · ");
  const job = t && t.job;
  $("train-log").textContent = (job && job.log_tail) || "";
  drawLoss(state.metrics);
  drawTrials(view && view.trials);
}
// `ownllm tune`'s trials as they finish: score by trial number, pruned ones hollow, the chosen one green
function drawTrials(t) {
  const svg = $("trial-chart"), trials = (t && t.trials) || [];
  svg.replaceChildren();
  svg.dataset.trials = trials.length;
  $("trials-box").hidden = !trials.length;
  if (!trials.length) return;
  const scored = trials.filter((tr) => typeof tr.score === "number" && isFinite(tr.score));
  $("trials-note").textContent = `${trials.length} ${T("trialsOf")}` + (t.best !== null ? ` · ${T("trialChosen")} ${t.best}` : "");
  if (!scored.length) return;
  const W = 600, H = 200, pad = 40, ys = scored.map((tr) => tr.score), span = Math.max(...ys) - Math.min(...ys) || 1;
  const maxX = Math.max(...trials.map((tr) => tr.number), 1), maxY = Math.max(...ys) + 0.1 * span, minY = Math.min(...ys) - 0.1 * span;
  const x = (v) => pad + (v / maxX) * (W - pad - 16), y = (v) => H - pad - ((v - minY) / (maxY - minY)) * (H - pad - 8);
  drawAxes(svg, W, H, pad, [[maxY.toFixed(3), 2, 14], [minY.toFixed(3), 2, H - pad], [String(maxX), W - 24, H - 12], ["0", pad, H - 12]]);
  for (const tr of scored) {
    const dot = svgEl("circle", { cx: x(tr.number), cy: y(tr.score), r: 6,
                                  class: `trial-point ${tr.number === t.best ? "best" : tr.state === "pruned" ? "pruned" : "complete"}` });
    const tip = svgEl("title");
    tip.textContent = `#${tr.number} ${Object.entries(tr.params || {}).map(([k, v]) => `${k} ${v}`).join(", ")} · ` +
                      `${tr.score} (${tr.steps} ${T("step")}, ${Math.round(tr.seconds)} s)`;
    dot.append(tip);
    svg.append(dot);
  }
}
// a chart's two axes and its [text, x, y] labels
function drawAxes(svg, W, H, pad, labels) {
  svg.append(svgEl("line", { x1: pad, y1: H - pad, x2: W - 8, y2: H - pad, class: "axis-line" }),
             svgEl("line", { x1: pad, y1: 8, x2: pad, y2: H - pad, class: "axis-line" }));
  for (const [text, tx, ty] of labels) {
    const label = svgEl("text", { x: tx, y: ty, class: "axis" });
    label.textContent = text;
    svg.append(label);
  }
}
function formatSeconds(s) {
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${Math.round((s % 3600) / 60)}m` : s >= 60 ? `${Math.floor(s / 60)}m${s % 60}s` : `${s}s`;
}
function drawLoss(rows) {
  const svg = $("loss-chart");
  svg.replaceChildren();
  const train = rows.filter((r) => typeof r.loss === "number" && isFinite(r.loss)).map((r) => [r.step, r.loss]);
  const val = rows.filter((r) => typeof r.eval_loss === "number").map((r) => [r.step, r.eval_loss]);
  const all = train.concat(val);
  svg.dataset.trainPoints = train.length;
  svg.dataset.valPoints = val.length;
  if (!all.length) return;
  const W = 600, H = 240, pad = 34;
  const ys = all.map((p) => p[1]), span = Math.max(...ys) - Math.min(...ys) || 1;
  const maxX = Math.max(...all.map((p) => p[0]), 1), maxY = Math.max(...ys) + 0.05 * span, minY = Math.max(0, Math.min(...ys) - 0.05 * span);
  const x = (v) => pad + (v / maxX) * (W - pad - 8), y = (v) => H - pad - ((v - minY) / (maxY - minY || 1)) * (H - pad - 8);
  drawAxes(svg, W, H, pad, [[maxY.toFixed(2), 2, 14], [minY.toFixed(2), 2, H - pad], [String(maxX), W - 40, H - 12], ["0", pad, H - 12]]);
  if (train.length) svg.append(svgEl("polyline", { points: train.map((p) => `${x(p[0])},${y(p[1])}`).join(" "), class: "train-line" }));
  for (const p of val) svg.append(svgEl("circle", { cx: x(p[0]), cy: y(p[1]), r: 4, class: "val-point" }));
}

// -- step 4: report and chat ------------------------------------------------------------------------
const METRICS = ["contains", "exact_match", "token_f1", "rouge_l", "bleu", "test_loss", "perplexity", "general_perplexity",
                 "ms_per_token"];
function renderEval(view) {
  const job = view && view.eval_job;
  $("eval-state").textContent = job ? (job.state === "running" ? T("working") : job.state === "done" ? T("done") :
                                        T("failed") + ": " + (job.log_tail || "")) : "";
  $("evaluate").disabled = !(view && view.adapter) || (job && job.state === "running");
  const e = view && view.eval;
  $("headline").textContent = e ? e.headline : "";
  $("full-report").hidden = !e;
  $("forgetting").hidden = !(e && e.forgetting_warning);
  const table = $("eval-table");
  if (!e) { table.replaceChildren(); return; }
  const head = el("tr");
  head.append(el("th", T("metric")), el("th", T("base")), el("th", T("tuned")));
  const fmt = (v) => (typeof v === "number" ? (Math.abs(v) < 1 ? v.toFixed(3) : v.toFixed(2)) : "—");
  const rows = METRICS.filter((m) => e.tuned && m in e.tuned).map((m) => {
    const tr = el("tr");
    tr.append(el("td", T("m_" + m)), el("td", fmt(e.base && e.base[m])), el("td", fmt(e.tuned[m])));
    return tr;
  });
  const g = e.general_answers;
  if (g && g.base_right) {  // of the probe questions the base model answered right, how many the tuned one still does
    const tr = el("tr");
    tr.append(el("td", T("m_general_kept")), el("td", String(g.base_right)),
              el("td", `${g.kept} (${Math.round(g.kept_share * 100)}%)`));
    rows.push(tr);
  }
  table.replaceChildren(head, ...rows);
}
async function askBoth() {
  const message = $("chat-input").value.trim();
  if (!message || !state.run) return;
  const pair = el("div", undefined, "pair");
  const q = el("p", message, "question");
  const base = el("div", T("working"), "answer base"), tuned = el("div", T("working"), "answer tuned");
  base.dataset.label = T("base");
  tuned.dataset.label = T("tuned");
  pair.append(q, base, tuned);
  $("chat-log").prepend(pair);
  $("chat-send").disabled = true;
  try {
    const r = await api(`/api/runs/${encodeURIComponent(state.run)}/chat`,
                        { json: { message, system: $("system").value.trim() || null } });
    base.textContent = r.base;
    tuned.textContent = r.tuned;
    pair.append(feedbackBar({ message, system: $("system").value.trim() || null, answer: r.tuned }));
    pair.classList.add("answered");
    $("chat-input").value = "";
  } catch (e) { pair.remove(); throw e; } finally { $("chat-send").disabled = false; }
}

// 👍 / 👎 / a better answer on the tuned model's reply: rows of the run's feedback.jsonl, to learn from
function feedbackBar(asked) {
  const bar = el("div", undefined, "feedback");
  // the words beside the signs: a browser without an emoji font still says what each button does
  const good = el("button", "👍 " + T("good", "good")), bad = el("button", "👎 " + T("bad", "bad"));
  const write = el("button", T("writeBetter", "write a better answer"));
  const box = el("textarea"), save = el("button", T("saveBetter", "save the better answer")), status = el("span");
  for (const b of [good, bad, write, save]) b.type = "button";
  good.title = T("goodAnswer", "a good answer");
  bad.title = T("badAnswer", "a bad answer");
  box.rows = 3;
  box.setAttribute("aria-label", T("betterAnswer", "the better answer"));
  box.hidden = save.hidden = true;
  const send = (extra) => guarded(async () => {
    const r = await api(`/api/runs/${encodeURIComponent(state.run)}/feedback`, { json: Object.assign({}, asked, extra) });
    status.textContent = `${T("feedbackSaved", "saved")} (${r.rows} ${T("feedbackRows", "in the run's feedback")})`;
    return r;
  });
  const openBox = () => { box.hidden = save.hidden = false; box.focus(); };
  good.addEventListener("click", async () => { if (await send({ label: "good" })) good.disabled = bad.disabled = true; });
  bad.addEventListener("click", async () => {
    if (await send({ label: "bad" })) { good.disabled = bad.disabled = true; openBox(); }  // then: what would be right?
  });
  write.addEventListener("click", openBox);
  save.addEventListener("click", async () => {
    const better = box.value.trim();
    if (better && await send({ better })) box.disabled = save.disabled = write.disabled = true;
  });
  bar.append(good, bad, write, box, save, status);
  return bar;
}

// -- step 5: export ---------------------------------------------------------------------------------
function renderExports(view) {
  const job = view && view.export_job;
  $("export-state").textContent = job ? (job.state === "running" ? T("working") : job.state === "done" ? T("done") :
                                          T("failed") + ": " + (job.log_tail || "")) : "";
  $("export").disabled = !(view && view.adapter) || (job && job.state === "running");
  const box = $("exports");
  box.replaceChildren(...((view && view.exports) || []).map(({ name, manifest }) => {
    const card = el("div", undefined, "export-card");
    card.dataset.name = name;
    card.append(el("h3", `${name} · ${manifest.all_checks_passed ? T("passed") : T("notPassed")}`));
    const checks = el("table", undefined, "grid");
    for (const c of manifest.checks) {
      const tr = el("tr", undefined, c.passed ? "ok" : "bad");
      tr.append(el("td", c.name), el("td", c.measured ?? c.note), el("td", c.threshold === undefined ? "≤ " + c.tolerance : (c.must_be === "at least" ? "≥ " : "≤ ") + c.threshold), el("td", c.passed ? T("passed") : T("notPassed")));
      checks.append(tr);
    }
    const files = el("ul");
    for (const f of manifest.files) {
      const li = el("li", `${f.name} · ${(f.bytes / 1048576).toFixed(1)} MB · `);
      li.dataset.file = f.name;
      const b = el("button", T("download"), "download");
      b.type = "button";
      b.addEventListener("click", () => guarded(() => download(`export/${name}/${f.name}`)));
      li.append(b);
      files.append(li);
    }
    card.append(el("h4", T("checks")), checks, el("h4", T("files")), files);
    return card;
  }));
}
async function download(path) {
  // a plain link, so the browser streams the file to disk (a GGUF or merged export is GBs, too big for a
  // Blob in this page's memory); the link carries a one-file token that lasts a minute
  const { url } = await api(`/api/runs/${encodeURIComponent(state.run)}/download-token`, { json: { path } });
  const a = el("a");
  a.href = url;
  a.download = path.split("/").pop();
  document.body.append(a);
  a.click();
  a.remove();
}

// -- wiring -----------------------------------------------------------------------------------------
function on(id, fn) { $(id).addEventListener("click", () => guarded(fn)); }
document.addEventListener("DOMContentLoaded", () => {
  // the key a studio on the network printed, as http://HOST:PORT/#key=...: kept for this tab, then off the URL
  if (location.hash.startsWith("#key=")) {
    sessionStorage.setItem("ownllm-key", decodeURIComponent(location.hash.slice(5)));
    history.replaceState(null, "", location.pathname + location.search);
  }
  for (const b of document.querySelectorAll("#steps button")) b.addEventListener("click", () => showStep(b.dataset.step));
  $("lang").addEventListener("click", () => {
    lang = lang === "zh" ? "en" : "zh";
    localStorage.setItem("ownllm-lang", lang);
    applyLanguage();
    guarded(() => loadRuns());
  });
  $("api-key").addEventListener("change", () => { sessionStorage.setItem("ownllm-key", $("api-key").value); guarded(init); });
  $("run-select").addEventListener("change", () => guarded(() => selectRun($("run-select").value)));
  $("file").addEventListener("change", () => guarded(upload));
  $("data-path").addEventListener("input", () => { state.uploaded = null; });
  on("docs-start", startDocs);
  on("inspect", inspect);
  on("create-run", createRun);
  on("plan", makePlan);
  on("train", startTraining);
  on("stop", () => runAction("stop"));
  on("resume", () => runAction("resume"));
  on("evaluate", async () => {
    await api(`/api/runs/${encodeURIComponent(state.run)}/eval`, { json: {} });
    await refresh();
  });
  on("chat-send", askBoth);
  on("learn-start", async () => {  // a preference stage on the run's feedback.jsonl (ownllm train --resume --method)
    await api(`/api/runs/${encodeURIComponent(state.run)}/learn`, { json: { method: $("learn-method").value || null } });
    $("learn-state").textContent = T("learnStarted", "started: follow it in step 3, then evaluate again");
    await refresh();
  });
  on("full-report", () => download("eval/report.html"));
  on("export", async () => {
    await api(`/api/runs/${encodeURIComponent(state.run)}/export`,
              { json: { format: $("export-format").value, quant: $("export-quant").value } });
    await refresh();
  });
  applyLanguage();
  guarded(init);
});
async function init() {
  const info = await api("/api/info");
  const m = info.machine;
  $("machine").textContent = m.gpus.length ? m.gpus.map((g) => `${g.name} ${g.memory_gb} GB`).join(", ") :
    `${m.cpu} · ${m.cores} cores · ${m.ram_gb} GB`;
  const fill = (id, items) => $(id).replaceChildren(...items.map((v) => { const o = el("option", v); o.value = v; return o; }));
  fill("method", info.methods);
  fill("protect", info.protection);
  $("protect").value = "default";
  fill("export-format", info.formats);
  fill("export-quant", info.quants);
  $("export-quant").value = "q8_0";
  await loadRuns();
  await loadModels();
}
