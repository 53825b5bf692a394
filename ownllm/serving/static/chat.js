// ownllm chat page: plain JS, no build step, no CDN. Everything a person or the model wrote is put
// on the page with textContent, never innerHTML, so markup in an answer shows as text.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { history: [], model: null, controller: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

function addMessage(role, text) {
  const box = document.createElement("div");
  box.className = "msg " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role === "user" ? "you 你" : role === "assistant" ? "model 模型" : "error 错误";
  const body = document.createElement("div");
  body.className = "content";
  body.textContent = text;
  box.append(label, body);
  $("log").append(box);
  $("log").scrollTop = $("log").scrollHeight;
  return body;
}

async function errorText(response) {
  try { const j = await response.json(); return j.error ? j.error.message : response.statusText; }
  catch (e) { return response.status + " " + response.statusText; }
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    if (!r.ok) { setStatus(await errorText(r)); return; }
    const data = await r.json();
    state.model = data.data[0].id;
    $("model-name").textContent = state.model;
    setStatus("ready 就绪");
  } catch (e) { setStatus("server unreachable 无法连接: " + e); }
}

async function send(text) {
  if (!state.model) await loadModel();
  if (!state.model) return;
  state.history.push({ role: "user", content: text });
  addMessage("user", text);
  const out = addMessage("assistant", "");
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history);
  const body = {
    model: state.model, messages, stream: true,
    temperature: parseFloat($("temperature").value), top_p: parseFloat($("top-p").value),
    max_tokens: parseInt($("max-tokens").value, 10) || 256,
  };
  state.controller = new AbortController();
  $("send").disabled = true; $("stop").disabled = false;
  setStatus("generating 生成中…");
  let answer = "";
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body),
                                                    signal: state.controller.signal });
    if (!r.ok) throw new Error(await errorText(r));
    const reader = r.body.getReader();
    const decoder = new TextDecoder("utf-8");  // stream: true keeps a Chinese character split across chunks whole
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const j = JSON.parse(data);
          if (j.error) throw new Error(j.error.message);
          const delta = j.choices && j.choices[0] && j.choices[0].delta;
          if (delta && delta.content) { answer += delta.content; out.textContent = answer; }
        }
      }
      $("log").scrollTop = $("log").scrollHeight;
    }
    setStatus("done 完成");
  } catch (e) {
    if (e.name === "AbortError") setStatus("stopped 已停止");
    else { out.parentElement.classList.add("error"); out.textContent = answer + (answer ? "\n" : "") + e.message;
           setStatus("error 错误"); }
  } finally {
    state.history.push({ role: "assistant", content: answer });
    state.controller = null;
    $("send").disabled = false; $("stop").disabled = true;
    document.body.dataset.idle = "1";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("input").value.trim();
    if (!text || state.controller) return;
    $("input").value = "";
    document.body.dataset.idle = "0";
    send(text);
  });
  $("input").addEventListener("keydown", (e) => {
    // isComposing: Enter that confirms a Chinese IME candidate must not send the message
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
  $("reset").addEventListener("click", () => {
    if (state.controller) state.controller.abort();
    state.history = []; $("log").textContent = ""; setStatus("cleared 已清空");
  });
  for (const [id, shown] of [["temperature", "temperature-value"], ["top-p", "top-p-value"]]) {
    $(id).addEventListener("input", () => { $(shown).textContent = $(id).value; });
  }
  $("api-key").addEventListener("change", loadModel);
  loadModel();
});
