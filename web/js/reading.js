// Reading mode: drop or pick one radiograph (POST /v1/diagnose) or several of one subject
// (POST /v1/studies); each is shown from the gateway's display rendition with the system's boxes,
// labels and heat maps, its result in the side panel, and for a study the subject-level table.

import * as api from "./api.js";
import { h, show, showError } from "./dom.js";
import { diagnosisPanel, fillStudyTable, systemHeads } from "./results.js";
import { ViewerPanel } from "./viewer.js";

export class ReadingMode {
  constructor() {
    this.panel = new ViewerPanel(document.querySelector('[data-viewer="reading"]'), "reading");
    this.error = document.getElementById("reading-error");
    this.progress = document.getElementById("reading-progress");
    this.result = document.getElementById("reading-result");
    this.list = document.getElementById("reading-radiograph-list");
    this.panel.onError = (error) => showError(this.error, error);
    this.files = [];
    this.results = new Map(); // file index → diagnosis
    this.skipped = new Map(); // file index → reason (a study's radiographs without a head)
    this.selected = 0;
    this.run = 0; // the newest set of files; answers for older ones are dropped
    this.wireInputs();
  }

  wireInputs() {
    const input = document.getElementById("reading-file");
    input.addEventListener("change", () => {
      if (input.files.length) this.open([...input.files]);
      input.value = ""; // choosing the same file again still reads it again
    });
    const zone = document.getElementById("reading-drop");
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      if (event.dataTransfer.files.length) this.open([...event.dataTransfer.files]);
    });
  }

  async open(files) {
    const run = ++this.run;
    this.files = files;
    this.results = new Map();
    this.skipped = new Map();
    showError(this.error, null);
    show(document.getElementById("reading-study"), false);
    this.progress.textContent = `Diagnosing ${files.length} radiograph${files.length > 1 ? "s" : ""}…`;
    this.result.replaceChildren(h("p", { className: "hint" }, "Waiting for the gateway…"));
    this.buildList();
    // The render's own failure is shown by the viewer panel; the diagnosis decides what follows.
    const shown = this.select(0).catch(() => {});
    try {
      await this.diagnose(files);
    } catch (error) {
      if (run !== this.run) return;
      showError(this.error, error);
      this.progress.textContent = "The gateway could not diagnose this.";
      this.result.replaceChildren();
      return;
    }
    if (run !== this.run) return;
    this.progress.textContent = this.summary();
    await shown;
    await this.drawResult();
  }

  async diagnose(files) {
    if (files.length === 1) {
      this.results.set(0, await api.diagnose(files[0]));
      return;
    }
    const study = await api.diagnoseStudy(files);
    for (const item of study.radiographs) this.results.set(item.index, item.result);
    for (const item of study.skipped) this.skipped.set(item.index, item.reason);
    fillStudyTable(document.querySelector("#reading-study-table tbody"), study, files.map((file) => file.name));
    show(document.getElementById("reading-study"), true);
    this.buildList();
  }

  summary() {
    const heads = [...this.results.values()].reduce((total, result) => total + result.heads.length, 0);
    const skipped = this.skipped.size ? `, ${this.skipped.size} without a femoral head` : "";
    return `Diagnosed: ${this.results.size} radiograph${this.results.size === 1 ? "" : "s"}, ${heads} femoral head${heads === 1 ? "" : "s"}${skipped}.`;
  }

  buildList() {
    const several = this.files.length > 1;
    show(document.getElementById("reading-radiographs"), several);
    if (!several) return;
    this.list.replaceChildren(
      ...this.files.map((file, index) => {
        const result = this.results.get(index);
        const note = result ? ` — ${result.view.view}` : this.skipped.has(index) ? " — no femoral head" : "";
        return h(
          "li",
          {},
          h(
            "button",
            { type: "button", className: "button list-button", "aria-pressed": String(index === this.selected), onClick: () => this.select(index).then(() => this.drawResult()) },
            `${index + 1}. ${file.name}${note}`,
          ),
        );
      }),
    );
  }

  async select(index) {
    this.selected = index;
    for (const [position, button] of [...this.list.querySelectorAll("button")].entries()) {
      button.setAttribute("aria-pressed", String(position === index));
    }
    const file = this.files[index];
    await this.panel.load((window) => api.render(file, window));
  }

  async drawResult() {
    const index = this.selected;
    const diagnosis = this.results.get(index);
    if (diagnosis) {
      const heads = await systemHeads(diagnosis);
      if (index !== this.selected) return;
      this.panel.viewer.setHeads(heads);
      this.result.replaceChildren(diagnosisPanel(diagnosis, { heading: `Result: ${this.files[index].name}` }));
    } else if (this.skipped.has(index)) {
      this.panel.viewer.setHeads([]);
      this.result.replaceChildren(h("p", { className: "muted" }, `${this.files[index].name}: ${this.skipped.get(index)}`));
    }
  }
}
