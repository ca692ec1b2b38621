/* The signature pad on the briefing page: draw with a finger, pen or mouse on the canvas; the
   drawing goes into the form as a PNG data: URL when it is sent. A static file, so the pages
   keep their content security policy (no inline script). */
(function () {
  "use strict";
  var pads = document.querySelectorAll("[data-signature-pad]");
  Array.prototype.forEach.call(pads, function (pad) {
    var canvas = pad.querySelector("canvas");
    var input = pad.querySelector("input[name=signature]");
    var clear = pad.querySelector("[data-signature-clear]");
    var form = pad.closest("form");
    var ctx = canvas.getContext("2d");
    var drawing = false;
    var drawn = false;

    function reset() {
      ctx.fillStyle = "#fff";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.lineWidth = 2.5;
      ctx.lineCap = "round";
      ctx.lineJoin = "round";
      ctx.strokeStyle = "#111";
      drawn = false;
      input.value = "";
    }

    function point(event) {
      var box = canvas.getBoundingClientRect();
      return {
        x: (event.clientX - box.left) * (canvas.width / box.width),
        y: (event.clientY - box.top) * (canvas.height / box.height)
      };
    }

    canvas.addEventListener("pointerdown", function (event) {
      drawing = true;
      canvas.setPointerCapture(event.pointerId);
      var p = point(event);
      ctx.beginPath();
      ctx.moveTo(p.x, p.y);
      event.preventDefault();
    });
    canvas.addEventListener("pointermove", function (event) {
      if (!drawing) { return; }
      var p = point(event);
      ctx.lineTo(p.x, p.y);
      ctx.stroke();
      drawn = true;
      event.preventDefault();
    });
    function stop() { drawing = false; }
    canvas.addEventListener("pointerup", stop);
    canvas.addEventListener("pointercancel", stop);
    clear.addEventListener("click", function () { reset(); });
    form.addEventListener("submit", function () {
      input.value = drawn ? canvas.toDataURL("image/png") : "";
    });
    reset();
  });
}());
