// The gateway's REST API as the page uses it (same origin; see gateway/rest/ and avn/pipeline/results.py for every field).
// Every failure becomes an ApiError carrying the gateway's own error code and message, so the
// page can show the user what the gateway said rather than a bare status.
//
// Every call carries the API key the user signed in with (session.js) as `authorization: Bearer
// <key>`. The key lives in sessionStorage: this tab only, gone when it closes, never in a cookie
// (so no other site can make the browser send it). A 401 forgets the key and tells the page
// (the "avn:signed-out" event), which asks for one again.

const KEY_STORAGE = "avn-api-key";
export const SIGNED_OUT_EVENT = "avn:signed-out";

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function rememberKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

export class ApiError extends Error {
  constructor(status, code, message, requestId) {
    super(message);
    this.status = status; // HTTP status, 0 when the gateway could not be reached
    this.code = code; // the gateway's error type, e.g. InvalidImage
    this.requestId = requestId || "";
  }

  // One sentence for the page: what went wrong, in the gateway's words, with the id to quote.
  describe() {
    const where = this.status ? `${this.status} ${this.code}` : this.code;
    const id = this.requestId ? ` (request ${this.requestId})` : "";
    return `${where}: ${this.message}${id}`;
  }
}

async function call(url, options = {}) {
  const key = apiKey();
  let response;
  try {
    response = await fetch(url, withKey(options, key));
  } catch (error) {
    throw new ApiError(0, "Unreachable", `the gateway cannot be reached (${error.message})`, "");
  }
  if (!response.ok) {
    if (response.status === 401 && apiKey() === key) {
      // Only the key this call sent is forgotten: one entered meanwhile may be good.
      forgetKey();
      window.dispatchEvent(new CustomEvent(SIGNED_OUT_EVENT));
    }
    throw await errorOf(response);
  }
  return response;
}

function withKey(options, key) {
  if (!key) return options;
  return { ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${key}` } };
}

async function errorOf(response) {
  const requestId = response.headers.get("x-request-id") || "";
  try {
    const body = await response.json();
    const error = body.error;
    return new ApiError(response.status, error.code, error.message, error.request_id || requestId);
  } catch {
    // Not the gateway's error body (a proxy in between, a static file that is missing).
    return new ApiError(response.status, "HTTP", response.statusText || "request failed", requestId);
  }
}

function query(params) {
  const pairs = Object.entries(params).filter(([, value]) => value !== null && value !== undefined);
  return pairs.length ? `?${new URLSearchParams(pairs.map(([k, v]) => [k, String(v)]))}` : "";
}

// The raw file as the body: the gateway recognises PNG, JPEG and DICOM from the bytes, which is
// safer than the browser's guess (it labels .dcm files inconsistently or not at all).
function rawBody(file) {
  return { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } };
}

export async function diagnose(file) {
  const response = await call(`/v1/diagnose${query({ include_overlay: false })}`, rawBody(file));
  return response.json();
}

export async function diagnoseStudy(files) {
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const response = await call(`/v1/studies${query({ include_overlay: false })}`, { method: "POST", body: form });
  return response.json();
}

// {caller, authentication}: who the gateway takes this tab for (also how the page checks a key).
export async function whoami() {
  return (await call("/v1/whoami")).json();
}

export async function models() {
  return (await call("/v1/models")).json();
}

export async function ready() {
  try {
    const response = await fetch("/readyz");
    return response.ok;
  } catch {
    return false;
  }
}

// A display rendition: {bitmap, window: {center, width}, width, height, format}.
export async function render(file, window) {
  const response = await call(`/v1/render${windowQuery(window)}`, rawBody(file));
  return rendition(response);
}

export async function caseImage(caseId, window) {
  const response = await call(`/v1/cases/${encodeURIComponent(caseId)}/image${windowQuery(window)}`);
  return rendition(response);
}

export async function cases() {
  return (await call("/v1/cases")).json();
}

export async function caseDiagnosis(caseId) {
  return (await call(`/v1/cases/${encodeURIComponent(caseId)}/diagnosis`)).json();
}

export async function caseTruth(caseId) {
  return (await call(`/v1/cases/${encodeURIComponent(caseId)}/truth`)).json();
}

function windowQuery(window) {
  return window ? query({ window_center: window.center, window_width: window.width }) : "";
}

async function rendition(response) {
  const headers = response.headers;
  const bitmap = await createImageBitmap(await response.blob());
  return {
    bitmap,
    window: {
      center: Number(headers.get("avn-window-center")),
      width: Number(headers.get("avn-window-width")),
    },
    width: Number(headers.get("avn-image-width")) || bitmap.width,
    height: Number(headers.get("avn-image-height")) || bitmap.height,
    format: headers.get("avn-source-format") || "",
  };
}
