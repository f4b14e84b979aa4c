// Starts Swagger UI on /api/v1/docs (web/api_docs.py): a file, not an inline script, so
// that the page's Content-Security-Policy can forbid inline scripts.
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var root = document.getElementById("swagger-ui");
    window.ui = window.SwaggerUIBundle({
      url: root.getAttribute("data-openapi-url"),
      dom_id: "#swagger-ui",
      deepLinking: true,
      // No validator badge: it would send the description to swagger.io.
      validatorUrl: null,
    });
  });
})();
