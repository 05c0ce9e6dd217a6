/* touchline tl.js (SPEC 11.2): keeps the referral click id of ?tl_click= in a
   first-party cookie for data-lookback-days (1-90, default 30), optionally on
   data-cookie-domain, and answers touchline.clickId() for checkout. */
(function (w, d) {
  var s = d.currentScript;
  var attr = function (n) { return s && s.getAttribute(n); };
  var uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  var days = Math.min(Math.max(parseInt(attr("data-lookback-days"), 10) || 30, 1), 90);
  var domain = attr("data-cookie-domain");
  var id = new URLSearchParams(w.location.search).get("tl_click");
  if (id && uuid.test(id)) {
    d.cookie = "tl_click=" + id + "; Max-Age=" + days * 86400 + "; Path=/; SameSite=Lax" +
      (domain ? "; Domain=" + domain : "") +
      (w.location.protocol === "https:" ? "; Secure" : "");
  }
  w.touchline = {
    clickId: function () {
      var m = d.cookie.match(/(?:^|;\s*)tl_click=([^;]+)/);
      return m && uuid.test(m[1]) ? m[1] : null;
    }
  };
})(window, document);
