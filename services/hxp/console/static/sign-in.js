"use strict";
// The sign-in page: the master key is exchanged for a session cookie, then back to the page asked for.
(function () {
  const form = document.getElementById("sign-in");
  const error = document.getElementById("error");

  function next() {
    const target = new URLSearchParams(location.search).get("next") || "/console";
    return /^\/console(\/[\w\-./]*)?(\?[\w\-=&.%]*)?$/.test(target) ? target : "/console";
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const response = await fetch("/console/sign-in", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json"},
      body: JSON.stringify({master_key: form.elements.master_key.value}),
    });
    if (response.ok) {
      location.assign(next());
      return;
    }
    const data = await response.json().catch(() => ({}));
    error.textContent = (data.error && data.error.message) || ("Sign-in failed (" + response.status + ")");
    error.hidden = false;
    form.elements.master_key.select();
  });
})();
