// Small DOM helpers: elements are built with text nodes only (never innerHTML), so a file name
// or a gateway message can never inject markup into the page.

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "className") element.className = value;
    else if (name === "style") Object.assign(element.style, value);
    else if (name.startsWith("on")) element.addEventListener(name.slice(2).toLowerCase(), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function percent(probability, digits = 0) {
  return `${(probability * 100).toFixed(digits)}%`;
}

export function show(element, visible) {
  element.hidden = !visible;
}

// The mode's alert line: the gateway's message for an ApiError, the text of anything else.
export function showError(element, error) {
  if (!error) {
    element.hidden = true;
    element.textContent = "";
    return;
  }
  element.textContent = typeof error.describe === "function" ? error.describe() : String(error.message || error);
  element.hidden = false;
}

export function capitalise(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}
