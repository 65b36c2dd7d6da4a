// Bulk upload with a progress bar. Without this script the form is an ordinary multipart
// POST (the server streams it through to the bulk API); with it, the same form is sent by
// XMLHttpRequest so that upload progress can be shown, and the browser then goes where
// the server says (the new registration, or the rejection report).
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("bulk-upload");
  if (!form || !window.FormData || !window.XMLHttpRequest) { return; }
  var box = document.getElementById("upload-status");
  var bar = document.getElementById("upload-progress");
  var message = document.getElementById("upload-message");
  var button = form.querySelector("button[type=submit]");

  function say(text) { message.textContent = text; }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var data = new FormData(form);  // DOM order: csrf_token, product_id, file
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("X-CSRF-Token", form.querySelector('input[name="csrf_token"]').value);
    xhr.setRequestHeader("Accept", "application/json");
    box.hidden = false;
    bar.value = 0;
    button.disabled = true;
    say("Uploading…");
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable && e.total > 0) {
        bar.value = Math.round((e.loaded / e.total) * 100);
        say("Uploading… " + bar.value + "%");
      }
    };
    xhr.upload.onload = function () {
      bar.value = bar.max;
      say("Uploaded; the bulk API is checking the file…");
    };
    xhr.onload = function () {
      var answer = null;
      try { answer = JSON.parse(xhr.responseText); } catch (ignored) { answer = null; }
      if (xhr.status === 200 && answer && typeof answer.location === "string" &&
          answer.location.indexOf("/console/") === 0) {
        window.location.assign(answer.location);
        return;
      }
      // An error page (403 read-only, 503 bulk API unreachable, ...): show its heading.
      var heading = new DOMParser().parseFromString(xhr.responseText, "text/html").querySelector("h1");
      say(heading ? heading.textContent : "The upload failed (" + xhr.status + ").");
      button.disabled = false;
    };
    xhr.onerror = function () {
      say("The upload failed: the console could not be reached.");
      button.disabled = false;
    };
    xhr.send(data);
  });
});
