// The stage form of the second-opinion and self-study modes: one radio group per femoral head
// (native radio buttons, so Tab reaches a group and the arrow keys choose within it), in the
// order the heads appear on the image.

import { capitalise, h } from "./dom.js";
import { STAGE_NAMES, STAGES } from "./vocabulary.js";

export const NOT_ASSESSABLE = ""; // a head the reader cannot stage (not visible, prosthesis…)

export function fillStageForm(fieldset, { prefix, legend, sides, notAssessable = false, values = {} }) {
  const options = notAssessable ? [...STAGES, NOT_ASSESSABLE] : STAGES;
  fieldset.replaceChildren(
    h("legend", {}, legend),
    ...sides.map((side) =>
      h(
        "fieldset",
        { className: "stage-choice", "data-side": side },
        h("legend", {}, `${capitalise(side)} femoral head`),
        ...options.map((stage, index) => {
          const id = `${prefix}-${side}-${stage || "na"}`;
          return h(
            "span",
            { className: "choice" },
            h("input", {
              type: "radio",
              name: `${prefix}-${side}`,
              id,
              value: stage,
              required: index === 0, // one required radio makes the whole group required
              checked: values[side] === stage,
            }),
            h("label", { for: id, title: STAGE_NAMES[stage] || "the head cannot be staged" }, stage || "not assessable"),
          );
        }),
      ),
    ),
  );
}

// {side: stage or NOT_ASSESSABLE}; a side left unanswered is absent.
export function stageChoices(form, prefix, sides) {
  const choices = {};
  for (const side of sides) {
    const checked = form.querySelector(`input[name="${prefix}-${side}"]:checked`);
    if (checked) choices[side] = checked.value;
  }
  return choices;
}

export function setFormDisabled(fieldset, disabled) {
  fieldset.disabled = disabled;
}
