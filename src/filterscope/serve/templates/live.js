// the explorer's live parts (outputs/templates/base.html loads this on every explorer page): jobs started and polled,
// finished parts swapped in, the layer picker
// start a job (POST, same origin) and poll it until it is done; then show its picture (data-src) or its part
function fsPoll(el) {
  var url = el.dataset.job, bar = el.querySelector("progress"), msg = el.querySelector(".msg");
  fetch(url, {method: "POST", cache: "no-store", credentials: "same-origin"})
  .then(function (r) { return r.text().then(function (t) { return [r.status, t, r.headers.get("Retry-After")]; }); })
  .then(function (rj) {
    var s = rj[0], j;
    try { j = JSON.parse(rj[1]); } catch (e) {  // a guard's plain-text refusal, or a proxy's error page
      if (msg) msg.textContent = "error " + s + ": " + rj[1].slice(0, 120);
      if (s >= 500) setTimeout(function () { fsPoll(el); }, 2000);
      return;
    }
    if (s === 429) {  // the server (or this client) has its share of jobs: wait as told, then ask again
      if (msg) msg.textContent = (j.error || "busy") + " · waiting";
      setTimeout(function () { fsPoll(el); }, 1000 * (parseInt(rj[2], 10) || 5));
      return;
    }
    if (j.state === "done") {
      if (el.dataset.reload) { fsRefresh(el); return; }
      el.querySelectorAll("img[data-src]").forEach(function (im, i) { im.src = j.urls[i]; im.hidden = false; });
      if (bar) bar.hidden = true;
      if (msg) msg.textContent = j.cached ? "from the cache" : "rendered in " + j.seconds + " s";
      return;
    }
    if (s >= 400 || j.state === "error" || j.state === "cancelled") { if (msg) msg.textContent = j.error || j.state; return; }
    if (bar && j.progress) { bar.max = j.progress[1]; bar.value = j.progress[0]; }
    if (msg) msg.textContent = j.state + (j.progress ? " · " + (j.progress[2] ? j.progress[2] + " " : "step ") + j.progress[0] + "/" + j.progress[1] : "") + " · " + j.seconds + " s";
    setTimeout(function () { fsPoll(el); }, 200);
  }).catch(function () { setTimeout(function () { fsPoll(el); }, 1000); });
}
// a finished job whose result is drawn by the server: fetch the page again and swap in its part (id), so the
// page's other jobs keep running. A page without parts reloads; a failed fetch is tried again (3 tries); a part
// that keeps coming back unfinished, or a page that cannot be fetched, asks for a reload instead of looping
function fsRefresh(el, tries) {
  var part = el.closest(".part[id]"), msg = el.querySelector(".msg");
  if (!part) { location.reload(); return; }
  tries = tries || 0;
  function ask(why) { if (msg) msg.innerHTML = why + ": <a href=\"\">reload the page</a> to see the result"; }
  if ((parseInt(part.dataset.swaps, 10) || 0) >= 2) { ask("done"); return; }
  fetch(location.href, {cache: "no-store", credentials: "same-origin"})
  .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
  .then(function (html) {
    var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(part.id);
    if (!fresh) { ask("done"); return; }
    fresh.dataset.swaps = (parseInt(part.dataset.swaps, 10) || 0) + 1;
    part.replaceWith(fresh);
    fresh.querySelectorAll("[data-job]").forEach(fsPoll);
  }).catch(function () {
    if (tries < 2) setTimeout(function () { fsRefresh(el, tries + 1); }, 1000 * (tries + 1));
    else ask("done, but the page could not be fetched");
  });
}
// the layer picker: stage and block outputs, or every module grouped by block
document.querySelectorAll("input.allmods").forEach(function (box) {
  box.addEventListener("change", function () {
    var form = box.form, short = form.querySelector("select.short"), all = form.querySelector("select.all");
    (box.checked ? all : short).value = (box.checked ? short : all).value;
    short.hidden = short.disabled = box.checked;
    all.hidden = all.disabled = !box.checked;
  });
});
document.querySelectorAll("[data-job]").forEach(fsPoll);
