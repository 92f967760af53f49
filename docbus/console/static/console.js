// docbus console: the one script. While a batch is unfinished, reload the batches table
// every data-refresh seconds (the server renders it; nothing here builds markup).
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live) return;
  let seconds = Number(live.dataset.refresh || 0);
  if (!(seconds > 0)) return;
  async function reload() {
    const url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (response.ok) {
        const holder = document.createElement("template");
        holder.innerHTML = await response.text();
        live.replaceChildren(holder.content);
        const again = response.headers.get("X-Refresh");
        seconds = again === null ? seconds : Number(again);
      }
    } catch (error) {
      // the console stopped or the network blinked: try again at the next tick
    }
    if (seconds > 0) window.setTimeout(reload, seconds * 1000);
  }
  window.setTimeout(reload, seconds * 1000);
})();
