// The radiograph viewer: a canvas that draws the gateway's display rendition, the femoral-head
// boxes with their side/stage labels and the class activation maps, with zoom and pan; and its
// toolbar (zoom buttons, CAM toggle and opacity, window/level sliders) cloned from the page's
// <template id="viewer-template"> once per mode.
//
// Coordinates: boxes and CAM squares come in the radiograph's own pixels (the rendition is the
// full-size image), so one transform (scale, offset) maps them and the image alike.

import { stageColour } from "./vocabulary.js";

const MIN_ZOOM_OF_FIT = 0.25; // how far out of "fit" one may zoom
const MAX_PIXEL_ZOOM = 8; // screen pixels per radiograph pixel at most
const WHEEL_ZOOM_RATE = 0.0015;
const KEY_PAN_PX = 40;
const KEY_ZOOM_STEP = 1.25;
const BOX_LINE_PX = 2.5;
const LABEL_FONT = "600 14px system-ui, sans-serif";
const WINDOW_DEBOUNCE_MS = 200;

// ------------------------------------------------------------------------------ CAM colouring

// The jet colour map (as the gateway's overlay, cv2.COLORMAP_JET) with opacity growing with the
// evidence, so regions without evidence leave the radiograph visible.
function jet(value) {
  const channel = (centre) => Math.max(0, Math.min(1, 1.5 - Math.abs(4 * value - centre)));
  return [channel(3), channel(2), channel(1)];
}

// A canvas holding the coloured heat map of one head, from the gateway's base64 grey PNG.
export async function heatMap(camPngBase64) {
  if (!camPngBase64) return null;
  const blob = await (await fetch(`data:image/png;base64,${camPngBase64}`)).blob();
  const grey = await createImageBitmap(blob);
  const canvas = document.createElement("canvas");
  canvas.width = grey.width;
  canvas.height = grey.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(grey, 0, 0);
  const image = context.getImageData(0, 0, canvas.width, canvas.height);
  const data = image.data;
  for (let i = 0; i < data.length; i += 4) {
    const value = data[i] / 255;
    const [r, g, b] = jet(value);
    data[i] = r * 255;
    data[i + 1] = g * 255;
    data[i + 2] = b * 255;
    data[i + 3] = value * 255;
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

// ------------------------------------------------------------------------------ the canvas

export class Viewer {
  constructor(canvas, announcer) {
    this.canvas = canvas;
    this.announcer = announcer; // a visually hidden live region that says what is drawn
    this.context = canvas.getContext("2d");
    this.image = null;
    this.imageSize = { width: 0, height: 0 };
    this.heads = [];
    this.camVisible = true;
    this.camOpacity = 0.6;
    this.view = { scale: 1, x: 0, y: 0 };
    this.userMoved = false; // keep the reader's zoom/pan across redraws; refit on resize otherwise
    this.drawn = []; // what the last draw put on screen (accessibility text, tests)
    this.listen();
    new ResizeObserver(() => this.resize()).observe(canvas.parentElement);
  }

  // ---------------------------------------------------------------- content

  setImage(bitmap, width, height, { keepView = false } = {}) {
    this.image = bitmap;
    this.imageSize = { width, height };
    if (!keepView) {
      this.userMoved = false;
      this.fit();
    } else {
      this.draw();
    }
  }

  // heads: [{side, stage, label, colour, dashed, box: {x0, y0, x1, y1}, cam: {canvas, box} | null}]
  setHeads(heads) {
    this.heads = heads;
    this.draw();
  }

  clear() {
    this.image = null;
    this.heads = [];
    this.draw();
  }

  setCamVisible(visible) {
    this.camVisible = visible;
    this.draw();
  }

  setCamOpacity(opacity) {
    this.camOpacity = opacity;
    this.draw();
  }

  // ---------------------------------------------------------------- view transform

  fit() {
    const { width, height } = this.cssSize();
    if (!this.image || !width || !height) {
      this.draw();
      return;
    }
    const scale = Math.min(width / this.imageSize.width, height / this.imageSize.height);
    this.view = {
      scale,
      x: (width - this.imageSize.width * scale) / 2,
      y: (height - this.imageSize.height * scale) / 2,
    };
    this.draw();
  }

  fitScale() {
    const { width, height } = this.cssSize();
    return Math.min(width / this.imageSize.width, height / this.imageSize.height) || 1;
  }

  zoomBy(factor, centreX, centreY) {
    if (!this.image) return;
    const { width, height } = this.cssSize();
    const cx = centreX ?? width / 2;
    const cy = centreY ?? height / 2;
    const scale = Math.min(
      Math.max(this.view.scale * factor, this.fitScale() * MIN_ZOOM_OF_FIT),
      MAX_PIXEL_ZOOM,
    );
    const applied = scale / this.view.scale;
    this.view = { scale, x: cx - (cx - this.view.x) * applied, y: cy - (cy - this.view.y) * applied };
    this.userMoved = true;
    this.draw();
  }

  panBy(dx, dy) {
    if (!this.image) return;
    this.view = { ...this.view, x: this.view.x + dx, y: this.view.y + dy };
    this.userMoved = true;
    this.draw();
  }

  // Radiograph pixels → CSS pixels of the canvas.
  toScreen(x, y) {
    return [this.view.x + x * this.view.scale, this.view.y + y * this.view.scale];
  }

  cssSize() {
    return { width: this.canvas.clientWidth, height: this.canvas.clientHeight };
  }

  resize() {
    const ratio = window.devicePixelRatio || 1;
    const { width, height } = this.cssSize();
    this.canvas.width = Math.max(1, Math.round(width * ratio));
    this.canvas.height = Math.max(1, Math.round(height * ratio));
    if (this.userMoved) this.draw();
    else this.fit();
  }

  // ---------------------------------------------------------------- input

  listen() {
    const canvas = this.canvas;
    let drag = null;
    canvas.addEventListener("pointerdown", (event) => {
      drag = { x: event.clientX, y: event.clientY };
      canvas.setPointerCapture(event.pointerId);
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!drag) return;
      this.panBy(event.clientX - drag.x, event.clientY - drag.y);
      drag = { x: event.clientX, y: event.clientY };
    });
    const release = () => {
      drag = null;
    };
    canvas.addEventListener("pointerup", release);
    canvas.addEventListener("pointercancel", release);
    canvas.addEventListener(
      "wheel",
      (event) => {
        event.preventDefault();
        const rect = canvas.getBoundingClientRect();
        this.zoomBy(Math.exp(-event.deltaY * WHEEL_ZOOM_RATE), event.clientX - rect.left, event.clientY - rect.top);
      },
      { passive: false },
    );
    canvas.addEventListener("keydown", (event) => this.onKey(event));
  }

  onKey(event) {
    const actions = {
      "+": () => this.zoomBy(KEY_ZOOM_STEP),
      "=": () => this.zoomBy(KEY_ZOOM_STEP),
      "-": () => this.zoomBy(1 / KEY_ZOOM_STEP),
      0: () => {
        this.userMoved = false;
        this.fit();
      },
      ArrowLeft: () => this.panBy(KEY_PAN_PX, 0),
      ArrowRight: () => this.panBy(-KEY_PAN_PX, 0),
      ArrowUp: () => this.panBy(0, KEY_PAN_PX),
      ArrowDown: () => this.panBy(0, -KEY_PAN_PX),
    };
    const action = actions[event.key];
    if (action) {
      event.preventDefault();
      action();
    }
  }

  // ---------------------------------------------------------------- drawing

  draw() {
    const context = this.context;
    const ratio = window.devicePixelRatio || 1;
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.fillStyle = "#000";
    context.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.drawn = [];
    if (this.image) {
      const { scale, x, y } = this.view;
      context.setTransform(ratio * scale, 0, 0, ratio * scale, ratio * x, ratio * y);
      context.imageSmoothingEnabled = scale < 1; // show real pixels when zoomed in
      context.drawImage(this.image, 0, 0, this.imageSize.width, this.imageSize.height);
      if (this.camVisible) this.drawCams();
      context.setTransform(ratio, 0, 0, ratio, 0, 0);
      for (const head of this.heads) this.drawHead(head);
    }
    this.announce();
  }

  drawCams() {
    const context = this.context;
    context.save();
    // A crop square near the border reaches past the radiograph (black padding for the
    // classifiers): the heat map is only drawn over the image itself, as in the gateway's overlay.
    context.beginPath();
    context.rect(0, 0, this.imageSize.width, this.imageSize.height);
    context.clip();
    context.imageSmoothingEnabled = true; // a CAM is a coarse map: smooth it like the overlay does
    context.globalAlpha = this.camOpacity;
    for (const head of this.heads) {
      if (!head.cam) continue;
      const { x0, y0, x1, y1 } = head.cam.box;
      context.drawImage(head.cam.canvas, x0, y0, x1 - x0, y1 - y0);
    }
    context.restore();
  }

  drawHead(head) {
    const context = this.context;
    const [sx0, sy0] = this.toScreen(head.box.x0, head.box.y0);
    const [sx1, sy1] = this.toScreen(head.box.x1, head.box.y1);
    const colour = head.colour || stageColour(head.stage);
    context.lineWidth = BOX_LINE_PX;
    context.strokeStyle = colour;
    context.setLineDash(head.dashed ? [8, 6] : []);
    context.strokeRect(sx0, sy0, sx1 - sx0, sy1 - sy0);
    context.setLineDash([]);
    this.drawLabel(head.label, sx0, head.labelBelow ? sy1 + 4 : sy0 - 4, colour, head.labelBelow);
    this.drawn.push({ side: head.side, stage: head.stage, label: head.label, dashed: !!head.dashed,
      x0: sx0, y0: sy0, x1: sx1, y1: sy1 });
  }

  // White text on black: readable over any part of a radiograph; a stage-coloured edge ties it to
  // its box. Kept inside the canvas, so a head at the image's edge still shows its label.
  drawLabel(text, x, y, colour, below) {
    const context = this.context;
    context.font = LABEL_FONT;
    const width = context.measureText(text).width + 10;
    const height = 20;
    const { width: canvasWidth, height: canvasHeight } = this.cssSize();
    const left = Math.max(0, Math.min(x, canvasWidth - width));
    const top = Math.max(0, Math.min(below ? y : y - height, canvasHeight - height));
    context.fillStyle = "rgba(0, 0, 0, 0.8)";
    context.fillRect(left, top, width, height);
    context.fillStyle = colour;
    context.fillRect(left, top, 4, height);
    context.fillStyle = "#fff";
    context.textBaseline = "middle";
    context.fillText(text, left + 7, top + height / 2);
  }

  announce() {
    const text = !this.image
      ? "no radiograph loaded"
      : this.drawn.length
        ? `${this.drawn.length} femoral head${this.drawn.length > 1 ? "s" : ""} drawn: ${this.drawn.map((d) => d.label).join("; ")}`
        : "radiograph shown, no femoral head drawn";
    this.canvas.setAttribute("aria-label", `Radiograph viewer: ${text}`);
    if (this.announcer) this.announcer.textContent = text;
  }
}

// ------------------------------------------------------------------------------ the toolbar

// The viewer of one mode with its toolbar wired. `load(source)` shows a radiograph: `source` is a
// function window → Promise<rendition> (api.render / api.caseImage); the window/level sliders
// call it again, the last request winning.
export class ViewerPanel {
  constructor(slot, prefix) {
    const fragment = document.getElementById("viewer-template").content.cloneNode(true);
    for (const element of fragment.querySelectorAll("[data-id]")) element.id = `${prefix}-${element.dataset.id}`;
    for (const element of fragment.querySelectorAll("[data-for]")) element.htmlFor = `${prefix}-${element.dataset.for}`;
    for (const element of fragment.querySelectorAll("[data-describedby]")) {
      element.setAttribute("aria-describedby", `${prefix}-${element.dataset.describedby}`);
    }
    slot.append(fragment);
    this.slot = slot;
    this.prefix = prefix;
    this.viewer = new Viewer(this.element("canvas"), this.element("drawn"));
    this.source = null;
    this.sequence = 0;
    this.onError = () => {};
    this.wire();
  }

  element(id) {
    return document.getElementById(`${this.prefix}-${id}`);
  }

  wire() {
    const actions = {
      "zoom-in": () => this.viewer.zoomBy(KEY_ZOOM_STEP),
      "zoom-out": () => this.viewer.zoomBy(1 / KEY_ZOOM_STEP),
      fit: () => {
        this.viewer.userMoved = false;
        this.viewer.fit();
      },
      "auto-window": () => this.reload(null).catch(() => {}), // onError has shown it
    };
    for (const button of this.slot.querySelectorAll("[data-action]")) {
      button.addEventListener("click", () => actions[button.dataset.action]());
    }
    const cam = this.element("cam");
    cam.addEventListener("change", () => this.viewer.setCamVisible(cam.checked));
    const opacity = this.element("cam-opacity");
    opacity.addEventListener("input", () => {
      this.element("cam-opacity-value").value = `${opacity.value}%`;
      this.viewer.setCamOpacity(Number(opacity.value) / 100);
    });
    let timer = null;
    for (const id of ["wl-center", "wl-width"]) {
      this.element(id).addEventListener("input", () => {
        this.showWindowValues();
        clearTimeout(timer);
        timer = setTimeout(() => this.reload(this.sliderWindow()).catch(() => {}), WINDOW_DEBOUNCE_MS);
      });
    }
    this.setWindowEnabled(false);
  }

  sliderWindow() {
    return {
      center: Number(this.element("wl-center").value) / 100,
      width: Number(this.element("wl-width").value) / 100,
    };
  }

  setSliders(window) {
    this.element("wl-center").value = (window.center * 100).toFixed(1);
    this.element("wl-width").value = (window.width * 100).toFixed(1);
    this.showWindowValues();
  }

  showWindowValues() {
    this.element("wl-center-value").value = `${Number(this.element("wl-center").value).toFixed(0)}%`;
    this.element("wl-width-value").value = `${Number(this.element("wl-width").value).toFixed(0)}%`;
  }

  setWindowEnabled(enabled) {
    for (const id of ["wl-center", "wl-width"]) this.element(id).disabled = !enabled;
    this.slot.querySelector('[data-action="auto-window"]').disabled = !enabled;
  }

  // Show a new radiograph (automatic window); resolves with its rendition.
  async load(source) {
    this.source = source;
    this.viewer.setHeads([]);
    return this.reload(null, { keepView: false });
  }

  async reload(window, { keepView = true } = {}) {
    if (!this.source) return null;
    const sequence = ++this.sequence;
    try {
      const rendition = await this.source(window);
      if (sequence !== this.sequence) return null; // a newer window was asked for meanwhile
      this.viewer.setImage(rendition.bitmap, rendition.width, rendition.height, { keepView });
      this.setSliders(rendition.window);
      this.setWindowEnabled(true);
      return rendition;
    } catch (error) {
      if (sequence === this.sequence) this.onError(error);
      throw error;
    }
  }

  clear() {
    this.source = null;
    this.sequence += 1;
    this.viewer.clear();
    this.setWindowEnabled(false);
  }
}
