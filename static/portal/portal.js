/* The customer portal's script: live updates over /ws/events/, charts (uPlot), copy buttons,
   confirmations, and the playground's streamed chat. Served from our origin; no inline code
   (the CSP allows only 'self'). */
(function () {
  "use strict";

  // --- Live updates: an event names an instance, a model code, an organization; the page's
  // fragments that show it re-fetch themselves (htmx), a little debounced.
  const timers = new WeakMap();
  function refresh(el, name) {
    if (!window.htmx) return;
    clearTimeout(timers.get(el));
    timers.set(el, setTimeout(function () { window.htmx.trigger(el, name || "inventiv:refresh"); }, 150));
  }
  function onEvent(msg) {
    const data = msg.data || {};
    document.querySelectorAll("[data-live-instance]").forEach(function (el) {
      if (data.instance_id && data.instance_id === el.dataset.liveInstance) refresh(el);
    });
    document.querySelectorAll("[data-live-model]").forEach(function (el) {
      if (data.model_code_id !== undefined && String(data.model_code_id) === el.dataset.liveModel) refresh(el);
    });
    document.querySelectorAll("[data-live-org]").forEach(function (el) {
      if (data.organization_id !== undefined && String(data.organization_id) === el.dataset.liveOrg) refresh(el);
    });
    document.body.dispatchEvent(new CustomEvent("inventiv:event", { detail: msg }));
  }
  let backoff = 1000;
  function connect() {
    const badge = document.getElementById("live");
    if (!badge) return;
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(proto + "://" + location.host + "/ws/events/");
    ws.onopen = function () { backoff = 1000; badge.textContent = "live"; badge.classList.add("on"); };
    ws.onmessage = function (e) {
      try { onEvent(JSON.parse(e.data)); } catch (err) { /* not an event: ignored */ }
    };
    ws.onclose = function () {
      badge.textContent = "offline"; badge.classList.remove("on");
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 15000);
    };
  }

  // --- Charts: a [data-chart] element names a json_script block with x (epoch seconds) and
  // the series; drawn as bars with uPlot, redrawn when its fragment is swapped or resized.
  function drawCharts(root) {
    if (!window.uPlot) return;
    root.querySelectorAll("[data-chart]").forEach(function (el) {
      const source = document.getElementById(el.dataset.chart);
      if (!source) return;
      const data = JSON.parse(source.textContent);
      const metric = el.dataset.metric || "tokens";
      let series, values;
      if (metric === "spend") {
        const currencies = Object.keys(data.spend || {});
        values = currencies.map(function (c) { return data.spend[c]; });
        series = currencies.map(function (c, i) {
          return { label: "spend (" + c + ")", stroke: ["#a15c00", "#7a3db8", "#16794c"][i % 3], fill: "rgba(161,92,0,.25)", paths: bars(), points: { show: false } };
        });
      } else {
        values = [data[metric]];
        series = [{ label: metric, stroke: "#2f5bd3", fill: "rgba(47,91,211,.3)", paths: bars(), points: { show: false } }];
      }
      el.innerHTML = "";
      const width = Math.max(el.clientWidth || 300, 260);
      const plot = new window.uPlot({
        width: width,
        height: 200,
        series: [{}].concat(series),
        scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, Math.max(max, 1) * 1.1]; } } },
        axes: [{}, { size: 60 }],
        legend: { show: true },
      }, [data.x].concat(values), el);
      el.dataset.rendered = String(values[0] ? values[0].reduce(function (a, b) { return a + b; }, 0) : 0);
      el._plot = plot;
    });
  }
  function bars() {
    return window.uPlot.paths && window.uPlot.paths.bars ? window.uPlot.paths.bars({ size: [0.6, 40] }) : undefined;
  }
  let resizeTimer;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () { drawCharts(document); }, 200);
  });

  // --- Small behaviours: copy, select on focus, confirm, hand a key to the
  // playground (the tab's sessionStorage only).
  function bind(root) {
    root.querySelectorAll("[data-copy]").forEach(function (button) {
      if (button.dataset.bound) return;
      button.dataset.bound = "1";
      button.addEventListener("click", function () {
        const target = document.querySelector(button.dataset.copy);
        if (!target) return;
        const text = target.value !== undefined && target.tagName === "INPUT" ? target.value : target.textContent;
        const done = function () { const old = button.textContent; button.textContent = "Copied"; setTimeout(function () { button.textContent = old; }, 1500); };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(target, text); done(); });
        } else { fallbackCopy(target, text); done(); }
      });
    });
    root.querySelectorAll("[data-select-on-focus]").forEach(function (input) {
      input.addEventListener("focus", function () { input.select(); });
    });
    root.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (e) { if (!window.confirm(form.dataset.confirm)) e.preventDefault(); });
    });
    // Progress while the server works, and no second submission of the same form.
    root.querySelectorAll("form[method=post]").forEach(function (form) {
      if (form.dataset.busyBound) return;
      form.dataset.busyBound = "1";
      form.addEventListener("submit", function (e) {
        if (e.defaultPrevented) return;
        if (form.dataset.busy) { e.preventDefault(); return; }
        form.dataset.busy = "1";
        form.setAttribute("aria-busy", "true");
        const button = e.submitter;
        if (button && button.tagName === "BUTTON") {
          button.dataset.label = button.textContent;
          // Disabled after the submission is built, so its name/value still goes with it.
          setTimeout(function () { button.disabled = true; button.textContent = button.dataset.label + "…"; }, 0);
        }
      });
    });
    root.querySelectorAll("[data-use-key]").forEach(function (button) {
      button.addEventListener("click", function () {
        const input = document.querySelector(button.dataset.useKey);
        if (input) sessionStorage.setItem("inventiv:playground-key", input.value);
        location.href = button.dataset.href;
      });
    });
    root.querySelectorAll("select[data-catalog]").forEach(function (select) {
      select.addEventListener("change", function () {
        const option = select.selectedOptions[0];
        const form = select.form;
        if (!option || !option.dataset.modelId) return;
        form.elements.model_id.value = option.dataset.modelId;
        if (!form.elements.vram_per_gpu_gb.value) form.elements.parameter_count_b.value = option.dataset.params;
        form.elements.max_model_len.value = option.dataset.context;
      });
    });
  }
  function fallbackCopy(target, text) {
    if (target.select) { target.select(); }
    else { const range = document.createRange(); range.selectNodeContents(target); const sel = getSelection(); sel.removeAllRanges(); sel.addRange(range); }
    try { document.execCommand("copy"); } catch (err) { /* the text stays selected for Ctrl+C */ }
    return text;
  }

  // --- The playground: POST /v1/chat/completions (same origin) with the key, streamed; shows
  // each token as it comes, the time to first token and the usage the gateway reports.
  function playground() {
    const form = document.getElementById("playground");
    if (!form) return;
    const keyInput = form.elements.key;
    const stored = sessionStorage.getItem("inventiv:playground-key");
    if (stored && !keyInput.value) keyInput.value = stored;
    const out = document.getElementById("pg-conversation");
    const ttftEl = document.getElementById("pg-ttft");
    const totalEl = document.getElementById("pg-total");
    const tokensEl = document.getElementById("pg-tokens");
    const errorEl = document.getElementById("pg-error");
    const send = document.getElementById("pg-send");
    const stop = document.getElementById("pg-stop");
    let controller = null;
    stop.addEventListener("click", function () { if (controller) controller.abort(); });
    form.addEventListener("submit", async function (e) {
      e.preventDefault();
      if (!form.reportValidity()) return;
      sessionStorage.setItem("inventiv:playground-key", keyInput.value.trim());
      errorEl.hidden = true;
      const user = document.createElement("p"); user.className = "user"; user.textContent = "You: " + form.elements.prompt.value;
      const answer = document.createElement("p"); answer.className = "assistant"; answer.textContent = "";
      out.append(user, answer);
      ttftEl.textContent = "…"; totalEl.textContent = "…"; tokensEl.textContent = "…";
      send.disabled = true; stop.disabled = false;
      controller = new AbortController();
      const started = performance.now();
      let first = null;
      try {
        const response = await fetch(form.dataset.endpoint, {
          method: "POST",
          signal: controller.signal,
          headers: { "Authorization": "Bearer " + keyInput.value.trim(), "Content-Type": "application/json" },
          body: JSON.stringify({
            model: form.elements.model.value,
            stream: true,
            stream_options: { include_usage: true },
            max_tokens: parseInt(form.elements.max_tokens.value, 10) || 64,
            messages: [{ role: "user", content: form.elements.prompt.value }],
          }),
        });
        if (!response.ok) {
          let message = response.status + " " + response.statusText;
          try { const body = await response.json(); if (body.error) message = body.error.message + " (" + body.error.code + ")"; } catch (err) { /* not JSON */ }
          throw new Error(message);
        }
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const chunk = await reader.read();
          if (chunk.done) break;
          buffer += decoder.decode(chunk.value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
            for (const line of event.split("\n")) {
              if (!line.startsWith("data:")) continue;
              const payload = line.slice(5).trim();
              if (payload === "[DONE]") continue;
              const data = JSON.parse(payload);
              if (data.error) throw new Error(data.error.message);
              for (const choice of data.choices || []) {
                const text = (choice.delta && choice.delta.content) || "";
                if (text) {
                  if (first === null) { first = performance.now(); ttftEl.textContent = Math.round(first - started) + " ms"; }
                  answer.textContent += text;
                }
              }
              if (data.usage) tokensEl.textContent = data.usage.prompt_tokens + " / " + data.usage.completion_tokens;
            }
          }
        }
        totalEl.textContent = Math.round(performance.now() - started) + " ms";
        if (tokensEl.textContent === "…") tokensEl.textContent = "not reported";
        if (first === null) ttftEl.textContent = "no token";
      } catch (err) {
        errorEl.textContent = err.name === "AbortError" ? "Stopped." : "The request failed: " + err.message;
        errorEl.hidden = false;
        if (ttftEl.textContent === "…") ttftEl.textContent = "—";
        totalEl.textContent = Math.round(performance.now() - started) + " ms";
        if (tokensEl.textContent === "…") tokensEl.textContent = "—";
      } finally {
        send.disabled = false; stop.disabled = true; controller = null;
      }
    });
  }

  // A page restored from the back-forward cache gets its forms back.
  window.addEventListener("pageshow", function (e) {
    if (!e.persisted) return;
    document.querySelectorAll("form[data-busy]").forEach(function (form) {
      delete form.dataset.busy;
      form.removeAttribute("aria-busy");
      form.querySelectorAll("button[data-label]").forEach(function (b) { b.disabled = false; b.textContent = b.dataset.label; });
    });
  });

  document.addEventListener("DOMContentLoaded", function () {
    bind(document);
    drawCharts(document);
    playground();
    connect();
    document.body.addEventListener("htmx:afterSwap", function (e) { bind(e.target); drawCharts(e.target); });
  });
})();
