// fleetreg console: small enhancements over pages that work without JavaScript.
// htmx (vendored beside this file) sends the CSRF token with every request it makes.
document.addEventListener("htmx:configRequest", function (event) {
  var token = document.querySelector('input[name="csrf_token"]');
  if (token) { event.detail.headers["X-CSRF-Token"] = token.value; }
});

// Copy buttons: <button data-copy="#element-id">.
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-copy]");
  if (!button) { return; }
  var source = document.querySelector(button.getAttribute("data-copy"));
  if (!source || !navigator.clipboard) { return; }
  navigator.clipboard.writeText(source.textContent.trim()).then(function () {
    button.textContent = "Copied";
  });
});
