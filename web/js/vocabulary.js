// The clinical vocabulary the page shows, mirroring avn/vocabulary.py (labels); the stage colours
// come from avn/drawing.py through the generated stage_colours.js (the same as the gateway's overlay
// PNG). tests/test_web.py checks in the browser that these equal the Python definitions.

import { STAGE_COLOURS } from "./stage_colours.js";

export { STAGE_COLOURS };

export const STAGES = ["absence", "II", "III", "IV"];
export const SIDES = ["left", "right"];

// The order in which sides appear on a radiograph: radiological convention puts the patient's
// right hip on the image's left.
export const SIDES_IMAGE_ORDER = ["right", "left"];

export const STAGE_NAMES = {
  absence: "absence (Ficat 0–I)",
  II: "stage II",
  III: "stage III",
  IV: "stage IV",
};

export function stageColour(stage) {
  const [r, g, b] = STAGE_COLOURS[stage] || [255, 255, 255];
  return `rgb(${r}, ${g}, ${b})`;
}
