// Signing in: the page asks for an API key once per tab (a dialog), checks it with the gateway
// (GET /v1/whoami), keeps it for api.js and shows who is signed in, with a way to sign out. When
// the gateway runs with authentication off (development) nobody is asked for anything.

import * as api from "./api.js";
import { showError } from "./dom.js";

export class Session {
  constructor() {
    this.dialog = document.getElementById("sign-in");
    this.form = document.getElementById("sign-in-form");
    this.input = document.getElementById("sign-in-key");
    this.error = document.getElementById("sign-in-error");
    this.who = document.getElementById("signed-in-as");
    this.signOutButton = document.getElementById("sign-out");
    this.waiting = null; // the promise of the open dialog, shared by everyone who waits on it
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.signOutButton.addEventListener("click", () => this.signOut());
    // Escape would close the modal dialog and leave the page without a key: keep it open.
    this.dialog.addEventListener("cancel", (event) => event.preventDefault());
    window.addEventListener(api.SIGNED_OUT_EVENT, () => this.prompt());
  }

  // Resolves once the gateway accepts this tab's key (asking for one as long as it does not).
  async ensure() {
    try {
      this.signedIn(await api.whoami());
      return;
    } catch (error) {
      if (error.status !== 401) showError(this.error, error);
    }
    await this.prompt();
  }

  prompt() {
    this.who.hidden = true;
    this.signOutButton.hidden = true;
    if (!this.waiting) {
      this.waiting = new Promise((resolve) => {
        this.resolve = resolve;
      });
      this.input.value = "";
      if (!this.dialog.open) this.dialog.showModal();
      this.input.focus();
    }
    return this.waiting;
  }

  async submit() {
    const key = this.input.value.trim();
    if (!key) return;
    api.rememberKey(key);
    try {
      const me = await api.whoami();
      showError(this.error, null);
      this.dialog.close();
      this.signedIn(me);
      this.waiting = null;
      this.resolve();
    } catch (error) {
      api.forgetKey();
      showError(this.error, error.status === 401 ? "The gateway does not accept this key." : error);
      this.input.select();
    }
  }

  signedIn(me) {
    const off = me.authentication === "off";
    this.who.textContent = off ? "Authentication off (development)" : `Signed in as ${me.caller}`;
    this.who.hidden = false;
    this.signOutButton.hidden = off;
  }

  signOut() {
    api.forgetKey();
    this.prompt();
  }
}
