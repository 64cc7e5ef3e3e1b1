// Self-study mode: the gateway's case bank (GET /v1/cases; an E3-style phantom set by default,
// or a folder of the user's, AVN_CASE_BANK). The student stages each femoral head, then gets the
// truth (dashed boxes), the system's result with its heat maps and notes, and the truth's notes;
// a running score and a confusion matrix (truth × student) follow the answers.

import * as api from "./api.js";
import { capitalise, h, percent, show, showError } from "./dom.js";
import { fillStageForm, stageChoices } from "./forms.js";
import { diagnosisPanel, systemHeads, truthHeads } from "./results.js";
import { ViewerPanel } from "./viewer.js";
import { STAGES, stageColour } from "./vocabulary.js";

const PREFIX = "ss";

export class SelfStudyMode {
  constructor() {
    this.panel = new ViewerPanel(document.querySelector('[data-viewer="self-study"]'), "self-study");
    this.error = document.getElementById("ss-error");
    this.progress = document.getElementById("ss-progress");
    this.form = document.getElementById("ss-form");
    this.heads = document.getElementById("ss-heads");
    this.submit = document.getElementById("ss-submit");
    this.next = document.getElementById("ss-next");
    this.feedback = document.getElementById("ss-feedback");
    this.panel.onError = (error) => showError(this.error, error);
    this.cases = null; // the bank's cases once loaded
    this.index = -1;
    this.answered = false;
    this.score = { heads: 0, correct: 0, cases: 0 };
    this.confusion = Object.fromEntries(STAGES.map((truth) => [truth, Object.fromEntries(STAGES.map((s) => [s, 0]))]));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.check();
    });
    this.next.addEventListener("click", () => this.showCase((this.index + 1) % this.cases.length));
    this.renderScore();
  }

  // Called whenever the tab is shown: the bank is read the first time.
  async activate() {
    if (this.cases) return;
    const source = document.getElementById("ss-source");
    let bank;
    try {
      bank = await api.cases();
    } catch (error) {
      showError(this.error, error);
      source.textContent = "The case bank could not be read.";
      return;
    }
    if (!bank.available) {
      source.textContent = `No case bank: ${bank.message}`;
      return;
    }
    this.cases = bank.cases;
    const split = bank.split === "all" ? "all radiographs" : `split ${bank.split}`;
    source.textContent = `Case bank: ${bank.cases.length} cases from ${bank.source} (${split}).`;
    await this.showCase(0);
  }

  async showCase(index) {
    this.index = index;
    this.answered = false;
    const item = this.cases[index];
    showError(this.error, null);
    this.feedback.replaceChildren();
    show(this.next, false);
    show(this.form, false);
    this.progress.textContent = `Case ${index + 1} of ${this.cases.length}. Loading…`;
    try {
      await this.panel.load((window) => api.caseImage(item.id, window));
    } catch {
      show(this.next, true);
      return;
    }
    fillStageForm(this.heads, { prefix: PREFIX, legend: "Your stage for each femoral head", sides: item.sides });
    this.heads.disabled = false;
    show(this.submit, true);
    this.submit.disabled = false;
    show(this.form, true);
    this.progress.textContent = `Case ${index + 1} of ${this.cases.length}: stage each femoral head.`;
    this.heads.querySelector("input")?.focus();
  }

  async check() {
    if (this.answered) return;
    this.answered = true;
    const item = this.cases[this.index];
    const answers = stageChoices(this.form, PREFIX, item.sides);
    this.heads.disabled = true;
    this.submit.disabled = true;
    this.progress.textContent = "Checking…";
    let truth;
    let diagnosis = null;
    try {
      [truth, diagnosis] = await Promise.all([
        api.caseTruth(item.id),
        api.caseDiagnosis(item.id).catch((error) => {
          showError(this.error, error); // the truth still teaches without the system's result
          return null;
        }),
      ]);
    } catch (error) {
      showError(this.error, error);
      this.answered = false;
      this.heads.disabled = false;
      this.submit.disabled = false;
      return;
    }
    this.count(truth, answers);
    this.showFeedback(truth, answers, diagnosis);
    const heads = diagnosis ? await systemHeads(diagnosis) : [];
    this.panel.viewer.setHeads([...heads, ...truthHeads(truth)]);
    show(this.submit, false);
    show(this.next, true);
    this.next.focus();
  }

  count(truth, answers) {
    this.score.cases += 1;
    for (const head of truth.heads) {
      const answer = answers[head.side];
      this.score.heads += 1;
      if (answer === head.stage) this.score.correct += 1;
      if (answer) this.confusion[head.stage][answer] += 1;
    }
    this.renderScore();
  }

  showFeedback(truth, answers, diagnosis) {
    const correct = truth.heads.filter((head) => answers[head.side] === head.stage).length;
    this.progress.textContent = `Case ${this.index + 1}: ${correct} of ${truth.heads.length} femoral heads staged as the truth.`;
    const systemStage = (side) => diagnosis?.heads.find((head) => head.side === side);
    this.feedback.replaceChildren(
      h("h2", {}, "Feedback"),
      h(
        "table",
        { className: "data-table feedback" },
        h("caption", {}, `Truth of ${truth.name} (${truth.view})`),
        h("thead", {}, h("tr", {}, ["Side", "You", "Truth", "System"].map((name) => h("th", { scope: "col" }, name)))),
        h(
          "tbody",
          {},
          truth.heads.map((head) => {
            const answer = answers[head.side];
            const right = answer === head.stage;
            const system = systemStage(head.side);
            return h(
              "tr",
              { className: right ? "right" : "wrong", "data-side": head.side },
              h("th", { scope: "row" }, capitalise(head.side)),
              h("td", {}, `${answer} ${right ? "✓ correct" : "✗ wrong"}`),
              h("td", {}, h("span", { className: "stage-chip", style: { background: stageColour(head.stage) } }, head.stage)),
              h("td", {}, system ? `${system.stage} ${percent(system.stage_probability)}` : "not found"),
            );
          }),
        ),
      ),
      h(
        "div",
        { className: "truth-notes" },
        h("h3", {}, "Notes of the truth"),
        h(
          "ul",
          {},
          truth.heads.map((head) =>
            h("li", {}, `${capitalise(head.side)}: ${head.notes.length ? head.notes.join(", ") : "none (no finding at this stage)"}`),
          ),
        ),
      ),
      diagnosis ? diagnosisPanel(diagnosis) : null,
    );
  }

  renderScore() {
    const { heads, correct, cases } = this.score;
    document.getElementById("ss-score").textContent = heads
      ? `${correct} of ${heads} femoral heads correct (${percent(correct / heads)}) over ${cases} case${cases === 1 ? "" : "s"}.`
      : "No case answered yet.";
    const table = document.getElementById("ss-confusion");
    table.querySelector("thead").replaceChildren(
      h("tr", {}, h("th", { scope: "col" }, "truth ╲ you"), STAGES.map((stage) => h("th", { scope: "col" }, stage))),
    );
    table.querySelector("tbody").replaceChildren(
      ...STAGES.map((truth) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, truth),
          STAGES.map((answer) =>
            h("td", { className: `number${truth === answer ? " diagonal" : ""}`, "data-truth": truth, "data-answer": answer },
              String(this.confusion[truth][answer])),
          ),
        ),
      ),
    );
  }
}
