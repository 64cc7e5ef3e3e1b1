// Second-opinion mode: the reader stages every femoral head first, then reveals the system's
// result and may revise. The page records both reads and the time taken, and exports them as
// the reader CSV of avn/readers_format.py (readers_csv.js).
//
// Worklist: radiographs the reader adds (case_id = the file name) or the gateway's case bank
// (case_id = the data-set image id). Timing starts when the radiograph is on screen.

import * as api from "./api.js";
import { h, show, showError } from "./dom.js";
import { NOT_ASSESSABLE, fillStageForm, stageChoices } from "./forms.js";
import { readerCsv } from "./readers_csv.js";
import { diagnosisPanel, systemHeads } from "./results.js";
import { ViewerPanel } from "./viewer.js";
import { SIDES_IMAGE_ORDER } from "./vocabulary.js";

const PREFIX = "so";
const READER_KEY = "avn.reader";

export class SecondOpinionMode {
  constructor() {
    this.panel = new ViewerPanel(document.querySelector('[data-viewer="second-opinion"]'), "second-opinion");
    this.error = document.getElementById("so-error");
    this.progress = document.getElementById("so-progress");
    this.form = document.getElementById("so-form");
    this.heads = document.getElementById("so-heads");
    this.submit = document.getElementById("so-submit");
    this.next = document.getElementById("so-next");
    this.result = document.getElementById("so-result");
    this.reader = document.getElementById("so-reader");
    this.panel.onError = (error) => showError(this.error, error);
    this.worklist = []; // [{caseId, name, file | null, sides | null}]
    this.index = -1;
    // idle (nothing in progress) → first → final → done (more to read) or idle again
    this.phase = "idle";
    this.reads = new Map(); // caseId → {caseId, name, heads: [{side, first, final}], firstSeconds, totalSeconds}
    this.wire();
  }

  wire() {
    this.reader.value = localStorage.getItem(READER_KEY) || "";
    this.reader.addEventListener("change", () => localStorage.setItem(READER_KEY, this.reader.value.trim()));
    const input = document.getElementById("so-file");
    input.addEventListener("change", () => {
      if (input.files.length) this.addFiles([...input.files]);
      input.value = "";
    });
    document.getElementById("so-use-bank").addEventListener("click", () => this.addCaseBank());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.record();
    });
    this.next.addEventListener("click", () => this.showCase(this.index + 1));
    document.getElementById("so-export").addEventListener("click", () => this.exportCsv());
  }

  // ---------------------------------------------------------------- worklist

  addFiles(files) {
    const taken = new Set(this.worklist.map((item) => item.caseId));
    for (const file of files) {
      let caseId = file.name;
      for (let n = 2; taken.has(caseId); n += 1) caseId = `${file.name}#${n}`; // case ids must be unique
      taken.add(caseId);
      this.worklist.push({ caseId, name: file.name, file, sides: null });
    }
    this.startIfIdle();
  }

  async addCaseBank() {
    showError(this.error, null);
    try {
      const bank = await api.cases();
      if (!bank.available) throw new Error(bank.message);
      const taken = new Set(this.worklist.map((item) => item.caseId));
      for (const item of bank.cases) {
        if (!taken.has(item.id)) this.worklist.push({ caseId: item.id, name: item.name, file: null, sides: item.sides });
      }
    } catch (error) {
      showError(this.error, error);
      return;
    }
    this.startIfIdle();
  }

  // Added radiographs start the reading when none is in progress, else they wait their turn.
  startIfIdle() {
    if (this.phase === "idle") this.showCase(this.index + 1);
    else if (this.phase === "done") this.updateNext();
  }

  // ---------------------------------------------------------------- one radiograph

  async showCase(index) {
    if (index >= this.worklist.length) return;
    this.index = index;
    this.phase = "first";
    const item = this.worklist[index];
    showError(this.error, null);
    this.result.replaceChildren();
    show(this.next, false);
    show(this.form, false);
    this.progress.textContent = `Radiograph ${index + 1} of ${this.worklist.length}: ${item.name}. Loading…`;
    const source = item.file ? (window) => api.render(item.file, window) : (window) => api.caseImage(item.caseId, window);
    try {
      await this.panel.load(source);
    } catch {
      this.updateNext(); // unreadable (the error is shown): nothing to read, go on with the next one
      return;
    }
    this.sides = item.sides || SIDES_IMAGE_ORDER;
    fillStageForm(this.heads, {
      prefix: PREFIX,
      legend: "Your first read, before the system's",
      sides: this.sides,
      notAssessable: !item.sides,
    });
    this.heads.disabled = false;
    this.submit.textContent = "Record first read";
    show(this.submit, true);
    show(this.form, true);
    this.progress.textContent = `Radiograph ${index + 1} of ${this.worklist.length}: ${item.name}. Stage each femoral head.`;
    this.startedAt = performance.now(); // the clock starts when the radiograph is on screen
    this.heads.querySelector("input")?.focus();
  }

  record() {
    if (!this.reader.value.trim()) {
      showError(this.error, new Error("enter your reader id first (it is the reader column of the CSV)"));
      this.reader.focus();
      return;
    }
    const choices = stageChoices(this.form, PREFIX, this.sides);
    if (this.phase === "first") this.recordFirst(choices);
    else if (this.phase === "final") this.recordFinal(choices);
  }

  async recordFirst(choices) {
    const item = this.worklist[this.index];
    const seconds = (performance.now() - this.startedAt) / 1000;
    this.reads.set(item.caseId, {
      caseId: item.caseId,
      name: item.name,
      heads: this.sides.map((side) => ({ side, first: choices[side] || NOT_ASSESSABLE, final: NOT_ASSESSABLE })),
      firstSeconds: seconds,
      totalSeconds: null,
    });
    this.phase = "final";
    this.heads.disabled = true;
    this.submit.disabled = true; // until the result is on screen: a final read needs it
    this.progress.textContent = "First read recorded. Revealing the system's result…";
    await this.reveal(item);
    this.submit.disabled = false;
    fillStageForm(this.heads, {
      prefix: PREFIX,
      legend: "Your final read: keep or revise",
      sides: this.sides,
      notAssessable: !item.sides,
      values: choices,
    });
    this.heads.disabled = false;
    this.submit.textContent = "Record final read";
    this.progress.textContent = "Compare with the system's result, then record your final read.";
    this.submit.focus();
  }

  async reveal(item) {
    try {
      const diagnosis = item.file ? await api.diagnose(item.file) : await api.caseDiagnosis(item.caseId);
      this.panel.viewer.setHeads(await systemHeads(diagnosis));
      this.result.replaceChildren(diagnosisPanel(diagnosis));
    } catch (error) {
      // The reader still records a final read: the system simply had nothing to add.
      showError(this.error, error);
      this.result.replaceChildren(h("p", { className: "muted" }, "No system result for this radiograph."));
    }
  }

  recordFinal(choices) {
    const item = this.worklist[this.index];
    const read = this.reads.get(item.caseId);
    read.totalSeconds = (performance.now() - this.startedAt) / 1000;
    for (const head of read.heads) head.final = choices[head.side] || NOT_ASSESSABLE;
    this.heads.disabled = true;
    this.renderReads();
    this.updateNext();
  }

  // After a radiograph is done: on to the next one, or idle until more are added.
  updateNext() {
    const more = this.index < this.worklist.length - 1;
    show(this.next, more);
    show(this.submit, false);
    this.progress.textContent = more
      ? `Read ${this.reads.size} of ${this.worklist.length}. Go on with the next radiograph.`
      : `${this.worklist.length === 1 ? "The radiograph is" : `All ${this.worklist.length} radiographs are`} read. `
        + "Export the CSV, or add more radiographs.";
    if (more) {
      this.phase = "done";
      this.next.focus();
    } else {
      this.phase = "idle";
    }
  }

  // ---------------------------------------------------------------- reads and export

  renderReads() {
    const rows = [];
    for (const read of this.reads.values()) {
      const seconds = `${read.firstSeconds.toFixed(1)} / ${read.totalSeconds?.toFixed(1) ?? "–"}`;
      for (const head of read.heads) {
        rows.push(
          h("tr", {}, h("td", {}, read.name), h("td", {}, head.side), h("td", {}, head.first || "n/a"),
            h("td", {}, head.final || "n/a"), h("td", { className: "number" }, seconds)),
        );
      }
    }
    document.querySelector("#so-records tbody").replaceChildren(...rows);
    document.getElementById("so-export").disabled = !this.completedReads().length;
  }

  completedReads() {
    return [...this.reads.values()].filter((read) => read.totalSeconds !== null);
  }

  exportCsv() {
    const reader = this.reader.value.trim();
    if (!reader) {
      showError(this.error, new Error("enter your reader id first (it is the reader column of the CSV)"));
      this.reader.focus();
      return;
    }
    const text = readerCsv(reader, this.completedReads());
    const textarea = document.getElementById("so-csv");
    textarea.value = text;
    show(textarea, true);
    const link = document.getElementById("so-download");
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
    link.download = `reader-${reader.replace(/[^A-Za-z0-9_.-]+/g, "_")}.csv`;
    show(link, true);
    link.click(); // the download starts at once; the link stays for a second copy
  }
}
