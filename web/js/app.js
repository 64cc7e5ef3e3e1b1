// Start-up: the three modes, the tabs that switch between them (also by URL hash: #reading,
// #second-opinion, #self-study, so a mode can be linked to), and the gateway's readiness line.
// No mode starts before the gateway accepts the tab's API key (session.js).

import * as api from "./api.js";
import { ReadingMode } from "./reading.js";
import { SecondOpinionMode } from "./second_opinion.js";
import { SelfStudyMode } from "./self_study.js";
import { Session } from "./session.js";

const READY_POLL_MS = 5000;

async function boot() {
  const session = new Session();
  watchReadiness(); // /readyz is open: the readiness line shows while the user signs in
  await session.ensure();
  const modes = {
    reading: new ReadingMode(),
    "second-opinion": new SecondOpinionMode(),
    "self-study": new SelfStudyMode(),
  };
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (name, { focus = false } = {}) => {
    for (const tab of tabs) {
      const chosen = tab.getAttribute("aria-controls") === name;
      tab.setAttribute("aria-selected", String(chosen));
      tab.tabIndex = chosen ? 0 : -1; // one tab stop for the tab list; arrows move inside it
      document.getElementById(tab.getAttribute("aria-controls")).hidden = !chosen;
      if (chosen && focus) tab.focus();
    }
    if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
    modes[name].activate?.(); // a mode may load what it needs when first shown
  };
  for (const [index, tab] of tabs.entries()) {
    tab.addEventListener("click", () => select(tab.getAttribute("aria-controls")));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      event.preventDefault();
      const next = tabs[(index + step + tabs.length) % tabs.length];
      select(next.getAttribute("aria-controls"), { focus: true });
    });
  }
  const fromHash = () => {
    const name = location.hash.slice(1);
    select(modes[name] ? name : "reading");
  };
  window.addEventListener("hashchange", fromHash); // links and the back button switch modes too
  fromHash();
  window.avn = { modes, session }; // for the browser tests and the console
}

async function watchReadiness() {
  const status = document.getElementById("gateway-status");
  const ready = await api.ready();
  status.textContent = ready ? "Gateway ready" : "Gateway starting: models not ready yet";
  status.classList.toggle("ready", ready);
  if (!ready) setTimeout(watchReadiness, READY_POLL_MS);
}

boot();
