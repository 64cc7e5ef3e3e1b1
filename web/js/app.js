// Start-up: the three modes, the tabs that switch between them (also by URL hash: #reading,
// #second-opinion, #self-study, so a mode can be linked to), and the gateway's readiness line.

import * as api from "./api.js";
import { ReadingMode } from "./reading.js";
import { SecondOpinionMode } from "./second_opinion.js";
import { SelfStudyMode } from "./self_study.js";

const READY_POLL_MS = 5000;

function boot() {
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
  window.avn = { modes }; // for the browser tests and the console
  watchReadiness();
}

async function watchReadiness() {
  const status = document.getElementById("gateway-status");
  const ready = await api.ready();
  status.textContent = ready ? "Gateway ready" : "Gateway starting: models not ready yet";
  status.classList.toggle("ready", ready);
  if (!ready) setTimeout(watchReadiness, READY_POLL_MS);
}

boot();
