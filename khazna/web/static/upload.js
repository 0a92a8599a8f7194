// The upload page: sends the chosen file with a progress bar. Reading the hub never needs
// this script; a form alone cannot report an upload's progress.
"use strict";
(() => {
  const form = document.getElementById("upload");
  if (!form) return;
  const bar = document.getElementById("u-progress");
  const status = document.getElementById("u-status");
  const done = document.getElementById("u-done");
  const button = form.querySelector("button");
  const show = (value) => {
    bar.value = value;
    bar.textContent = `${value} %`;
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = form.elements.file.files[0];
    if (!file) return;
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", form.dataset.target + encodeURIComponent(file.name));
    xhr.upload.addEventListener("progress", (e) => {
      // 99 at most until the hub says the file is stored (hashed, fsynced, versioned).
      if (e.lengthComputable) show(Math.min(99, Math.floor((100 * e.loaded) / e.total)));
    });
    xhr.addEventListener("load", () => {
      button.disabled = false;
      if (xhr.status === 200) {
        const answer = JSON.parse(xhr.responseText);
        show(100);
        status.textContent = form.dataset.done.replace("VERSION", answer.version);
        done.hidden = false;
        return;
      }
      let message = `HTTP ${xhr.status}`;
      try {
        message = JSON.parse(xhr.responseText).error.message;
      } catch (_) {
        // not the hub's JSON: keep the status
      }
      status.textContent = `${form.dataset.failed} ${message}`;
    });
    xhr.addEventListener("error", () => {
      button.disabled = false;
      status.textContent = form.dataset.failed;
    });
    button.disabled = true;
    show(0);
    status.textContent = "";
    xhr.send(file);
  });
})();
