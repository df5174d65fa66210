// The drawing pad: dark ink on white paper, sent as a PNG to /api/predict while you draw.
"use strict";

const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const seen = document.getElementById("seen").getContext("2d");
const statusLine = document.getElementById("status");
const INTERVAL_MS = 150; // at most one request per this while drawing
let drawing = false;
let last = null;
let pending = false; // a request is in flight
let again = false; // the drawing changed while it was
let lastSent = 0;
// Versions of the drawing: pad.dataset.drawn changes with each stroke, pad.dataset.answered
// names the version the shown answer is for (equal when the answer is up to date).
let drawn = 0;
let sent = 0; // the version last sent
let cleared = 0; // answers for versions before this are stale
let thing = "digit"; // what the model classifies, from its class names (describeModel)
let lastAnswer = null; // shown again when the guess box is ticked or cleared

function clearPad() {
  drawn += 1;
  cleared = drawn;
  pad.dataset.drawn = pad.dataset.answered = drawn;
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, pad.width, pad.height);
  seen.clearRect(0, 0, 28, 28);
  document.getElementById("label").textContent = "?";
  document.getElementById("label").classList.remove("unknown");
  document.getElementById("confidence").textContent = "";
  lastAnswer = null;
  showBars(null);
  setStatus(`Draw ${article(thing)} ${thing} to start.`, false);
}

function article(word) {
  return /^[aeiou]/i.test(word) ? "an" : "a";
}

// The page speaks of what the served model classifies: digits for MNIST, the class names
// (from /healthz, i.e. the model file's metadata) for anything else, such as Fashion-MNIST.
async function describeModel() {
  const response = await fetch("/healthz");
  if (!response.ok) return;
  const health = await response.json();
  const digits = health.classes.every((name) => /^[0-9]$/.test(name));
  thing = digits ? "digit" : "item";
  document.title = `${health.dataset} classifier`;
  document.getElementById("heading").textContent = `Draw ${article(thing)} ${thing}`;
  document.getElementById("guess-text").textContent =
    `Show the best guess even for drawings that do not look like ${health.subject}`;
  if (!digits) {
    document.getElementById("hint").textContent =
      `Draw one of ${health.classes.join(", ")}, with the mouse or a finger. The model ` +
      "answers as you draw. Or upload a picture of one.";
  }
  if (pad.dataset.drawn === cleared.toString()) clearPad(); // nothing drawn yet
}

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width,
          (event.clientY - box.top) * pad.height / box.height];
}

function stroke(to) {
  ink.strokeStyle = "#000";
  ink.lineWidth = 18;
  ink.lineCap = "round";
  ink.lineJoin = "round";
  ink.beginPath();
  ink.moveTo(...(last || to));
  ink.lineTo(...to);
  ink.stroke();
  last = to;
  drawn += 1;
  pad.dataset.drawn = drawn;
}

pad.addEventListener("pointerdown", (event) => {
  pad.setPointerCapture(event.pointerId);
  drawing = true;
  last = null;
  stroke(point(event));
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  stroke(point(event));
  if (Date.now() - lastSent > INTERVAL_MS) sendPad();
});
for (const name of ["pointerup", "pointercancel"]) {
  pad.addEventListener(name, () => {
    if (!drawing) return;
    drawing = false;
    sendPad();
  });
}

function sendPad() {
  if (pending) {
    again = true;
    return;
  }
  if (sent === drawn) return; // this drawing is answered or on its way
  lastSent = Date.now();
  pending = true;
  const version = drawn;
  sent = version;
  pad.toBlob((blob) => send(blob, "pad.png", version), "image/png");
}

async function send(blob, name, version) {
  pending = true;
  again = false;
  const form = new FormData();
  form.append("file", blob, name);
  try {
    const reading = document.getElementById("number").checked;
    const query = document.getElementById("guess").checked ? "?guess=true" : "";
    const url = (reading ? "/api/number" : "/api/predict") + query;
    const response = await fetch(url, { method: "POST", body: form });
    const body = await response.json();
    const stale = version !== undefined && version < cleared;
    if (stale) return; // drawn before the pad was cleared
    if (response.ok) showAnswer(body);
    else setStatus(body.error || `error ${response.status}`, true);
    if (version !== undefined) pad.dataset.answered = version;
  } catch (error) {
    setStatus(`the server did not answer (${error})`, true);
  } finally {
    pending = false;
    if (again) sendPad();
  }
}

function drawInput(canvas, input) {
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(28, 28);
  input.flat().forEach((value, i) => {
    pixels.data.set([value, value, value, 255], i * 4);
  });
  context.putImageData(pixels, 0, 0);
}

// A number: its digits as read ("?" where one does not look like a digit), and each digit
// the model saw, left to right.
function showNumber(answer) {
  const label = document.getElementById("label");
  label.textContent = answer.number;
  label.classList.toggle("unknown", answer.unknown.length > 0);
  const count = answer.digits.length;
  document.getElementById("confidence").textContent = `${count} digit${count === 1 ? "" : "s"}`;
  setStatus(answer.unknown.length ? `positions ${answer.unknown.map((i) => i + 1).join(", ")}` +
    " do not look like a digit" : "", false);
  showBars({});
  seen.clearRect(0, 0, 28, 28);
  const strip = document.getElementById("digits");
  strip.replaceChildren(...answer.digits.map((digit) => {
    const canvas = document.createElement("canvas");
    canvas.width = 28;
    canvas.height = 28;
    canvas.title = digit.label === null ? "unknown" : digit.label;
    drawInput(canvas, digit.input);
    return canvas;
  }));
}

function showAnswer(answer) {
  lastAnswer = answer;
  if (answer.digits) {
    showNumber(answer);
    return;
  }
  document.getElementById("digits").replaceChildren();
  const guess = Object.entries(answer.probabilities).reduce((a, b) => (b[1] > a[1] ? b : a));
  const showGuess = document.getElementById("guess").checked;
  const label = document.getElementById("label");
  const confidence = document.getElementById("confidence");
  if (answer.flagged) {
    // Not like the training data: no answer, unless the visitor asks for the guess.
    label.textContent = showGuess ? `${guess[0]}?` : "?";
    confidence.textContent = showGuess ? `guess, ${(guess[1] * 100).toFixed(1)}%` : "";
    setStatus(`${answer.message} (score ${answer.ood_score.toFixed(2)}, threshold ` +
      `${answer.ood_threshold.toFixed(2)})`, false);
  } else {
    label.textContent = answer.label;
    confidence.textContent = `${(answer.confidence * 100).toFixed(1)}% sure`;
    setStatus("", false);
  }
  label.classList.toggle("unknown", answer.flagged);
  showBars(answer.probabilities);
  drawInput(seen.canvas, answer.input);
}

function showBars(probabilities) {
  const bars = document.getElementById("bars");
  bars.replaceChildren();
  const entries = Object.entries(probabilities || {});
  const top = Math.max(...entries.map(([, p]) => p));
  for (const [name, p] of entries) {
    const bar = document.createElement("div");
    bar.className = p === top ? "bar top" : "bar";
    bar.style.width = `${Math.max(p * 100, 0.5)}%`;
    bar.dataset.label = name;
    const value = document.createElement("span");
    value.textContent = `${(p * 100).toFixed(1)}%`;
    const label = document.createElement("span");
    label.textContent = name;
    const track = document.createElement("div");
    track.append(bar);
    bars.append(label, track, value);
  }
}

document.getElementById("clear").addEventListener("click", clearPad);
document.getElementById("guess").addEventListener("change", () => {
  if (lastAnswer && !lastAnswer.digits) showAnswer(lastAnswer);
});
document.getElementById("number").addEventListener("change", () => {
  if (drawn === cleared) return; // nothing drawn since the pad was cleared
  sent = -1; // the same drawing, asked again the other way
  sendPad();
});
document.getElementById("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) send(file, file.name);
  event.target.value = "";
});

clearPad();
describeModel();
