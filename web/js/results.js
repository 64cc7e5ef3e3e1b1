// How a diagnosis (the JSON of POST /v1/diagnose, gateway/rest/models.py DiagnosisResponse, generated from avn/pipeline/results.py) is shown:
// the heads the viewer draws (boxes, labels, heat maps) and the side panel (the radiograph's
// view, per head the stage probabilities as bars, the derived classes and the fused notes),
// plus the subject-level table of a study. Shared by the three modes.

import { capitalise, h, percent } from "./dom.js";
import { STAGE_NAMES, STAGES, stageColour } from "./vocabulary.js";
import { heatMap } from "./viewer.js";

const VIEW_NAMES = { AP: "anteroposterior", FL: "frog-leg lateral" };

export function headLabel(head) {
  return `${head.side} · ${head.stage} ${percent(head.stage_probability)}`;
}

// The viewer's heads for a diagnosis, heat maps decoded and coloured.
export async function systemHeads(diagnosis) {
  return Promise.all(
    diagnosis.heads.map(async (head) => {
      const canvas = await heatMap(head.cam_png);
      return {
        side: head.side,
        stage: head.stage,
        label: headLabel(head),
        box: head.box,
        cam: canvas ? { canvas, box: head.cam_box } : null,
      };
    }),
  );
}

// The truth's heads (self-study feedback): dashed white boxes, labels under the box so that they
// never cover the system's.
export function truthHeads(truth) {
  return truth.heads.map((head) => ({
    side: head.side,
    stage: head.stage,
    label: `truth: ${head.side} · ${head.stage}`,
    box: head.box,
    colour: "#ffffff",
    dashed: true,
    labelBelow: true,
    cam: null,
  }));
}

// ------------------------------------------------------------------------------ side panel

export function diagnosisPanel(diagnosis, { heading = "System's reading" } = {}) {
  const view = diagnosis.view;
  return h(
    "div",
    { className: "diagnosis" },
    h("h2", {}, heading),
    h(
      "p",
      { className: "view-line", "data-testid": "view" },
      "View: ",
      h("strong", {}, `${view.view}`),
      ` (${VIEW_NAMES[view.view] || view.view}) ${percent(view.probability)}`,
    ),
    diagnosis.heads.map((head) => headCard(head, diagnosis.note_threshold)),
  );
}

function lowConfidence(head) {
  if (!head.low_confidence) return null;
  return h(
    "p",
    { className: "low-confidence", role: "note", "data-testid": "low-confidence" },
    h("strong", {}, "Low confidence — have a radiologist check this head: "),
    head.low_confidence_reasons.join("; "),
  );
}

function headCard(head, threshold) {
  const flipped = head.side_corrected ? " (side from the image layout; the side model disagreed)" : "";
  return h(
    "article",
    { className: "head-card", "data-side": head.side, "data-stage": head.stage, style: { borderLeftColor: stageColour(head.stage) } },
    h("h3", {}, `${capitalise(head.side)} femoral head: `, h("span", { className: "stage" }, head.stage), ` ${percent(head.stage_probability)}`),
    h(
      "p",
      { className: "derived" },
      `Side ${percent(head.side_probability)}${flipped} · presence: ${head.presence} ${percent(head.presence_probability)}`
        + ` · collapse: ${head.collapse} ${percent(head.collapse_probability)}`,
    ),
    lowConfidence(head),
    stageBars(head.stage_probabilities, head.stage),
    notesList(head.notes, threshold),
  );
}

function stageBars(probabilities, predicted) {
  const byLabel = Object.fromEntries(probabilities.map((item) => [item.label, item.probability]));
  return h(
    "table",
    { className: "stage-bars" },
    h("caption", { className: "visually-hidden" }, "Stage probabilities"),
    h(
      "tbody",
      {},
      STAGES.map((stage) => {
        const probability = byLabel[stage] ?? 0;
        return h(
          "tr",
          { className: stage === predicted ? "predicted" : "" },
          h("th", { scope: "row", title: STAGE_NAMES[stage] }, stage),
          h(
            "td",
            { className: "bar-cell" },
            h("span", {
              className: "bar",
              "aria-hidden": "true",
              style: { width: percent(probability, 1), background: stageColour(stage) },
            }),
          ),
          h("td", { className: "number" }, percent(probability, 1)),
        );
      }),
    ),
  );
}

function notesList(notes, threshold) {
  const passed = notes.filter((note) => note.passed);
  const others = notes.filter((note) => !note.passed);
  const item = (note) =>
    h("li", {}, h("span", { className: "note-name" }, note.note), ` (${note.stage}) `, h("span", { className: "number" }, percent(note.probability)));
  return h(
    "div",
    { className: "notes" },
    h("h4", {}, `Notes (fused probability ≥ ${percent(threshold)})`),
    passed.length ? h("ul", { className: "passed" }, passed.map(item)) : h("p", { className: "muted" }, "None."),
    others.length
      ? h("details", {}, h("summary", {}, `Below the threshold (${others.length})`), h("ul", {}, others.map(item)))
      : null,
  );
}

// ------------------------------------------------------------------------------ study

export function fillStudyTable(tbody, study, names) {
  tbody.replaceChildren(
    ...study.sides.map((side) =>
      h(
        "tr",
        {},
        h("th", { scope: "row" }, side.side),
        h("td", {}, h("span", { className: "stage-chip", style: { background: stageColour(side.stage) } }, side.stage)),
        h("td", { className: "number" }, percent(side.probability)),
        h("td", {}, names[side.radiograph_index] ?? `#${side.radiograph_index + 1}`),
      ),
    ),
  );
}
