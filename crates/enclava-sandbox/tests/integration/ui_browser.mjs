// The dashboard in a real headless Chromium (Debian's), driven by playwright-core: signs in, checks
// each page, saves screenshots. Between steps it prints "READY <step>" and waits for a line on
// stdin while the Rust test acts (evicts a model, loads it, kills a node). Any failed check, page
// error or Content-Security-Policy violation exits non-zero.
import { chromium } from "playwright-core";
import readline from "node:readline";

const { BASE, TOKEN_A, TOKEN_B, NODE1, NODE2, MODEL, JOB, SHOTS, CHROMIUM } = process.env;
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function step(name) {
  console.log("READY " + name);
  await lines.next();
}

function check(ok, what) {
  if (!ok) throw new Error("check failed: " + what);
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-gpu"] });
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
const errors = [];
page.on("pageerror", (e) => errors.push(String(e)));
// Console errors count, except the 401s of signing in with a wrong credential and of the first
// "who am I" before signing in, which the test causes on purpose.
page.on("console", (m) => {
  if (m.type() === "error" && !m.text().includes("status of 401")) errors.push(m.text());
});
const shot = (name) => page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
const drawn = () => page.evaluate(() => document.getElementById("view").dataset.drawn || "");
async function tab(name) {
  const before = await drawn();
  await page.click(`button[data-tab="${name}"]`);
  await page.waitForFunction((b) => (document.getElementById("view").dataset.drawn || "") !== b, before);
}
const rowHas = (id, text) => page.waitForFunction(([id, text]) => {
  const r = document.querySelector(`tr[data-id="${id}"]`);
  return r && r.textContent.includes(text);
}, [id, text], { timeout: 10000 });

try {
  await page.goto(BASE + "/ui");
  await shot("1-sign-in");
  // A wrong credential is refused, in words.
  await page.fill("#token", "ekt_not_a_real_token");
  await page.click("#signin-form button");
  await page.waitForFunction(() => document.getElementById("signin-error").textContent.includes("refused"));

  // Sign in: every live enclave, its platform's status in words, what its evidence proved.
  await page.fill("#token", TOKEN_A);
  await page.click("#signin-form button");
  await page.waitForSelector(`tr[data-id="${NODE1}"]`, { timeout: 10000 });
  await page.waitForSelector(`tr[data-id="${NODE2}"]`);
  const row = await page.textContent(`tr[data-id="${NODE1}"]`);
  check(row.includes("Simulated TEE: testing only"), "the security status in words: " + row);
  check(row.includes("verified") && row.includes("platform sim"), "what the evidence proved: " + row);
  // An info entry someone wrote with markup in it is shown as text, never run.
  const evil = await page.textContent('tr[data-id="evil-1"]');
  check(evil.includes("<script>"), "the injected text is shown: " + evil);
  check(await page.evaluate(() => window.pwned === undefined), "no injected script ran");
  await shot("2-enclaves");

  // A second listener records when change events arrive (for the failure report).
  await page.evaluate(() => {
    window.__events = [];
    new EventSource("/ui/api/events").addEventListener("changed", () => window.__events.push(Date.now()));
  });
  // A model evicted turns cold, then hot when a request loads it again.
  await step("evict");
  await rowHas(NODE2, MODEL + " (cold)");
  await step("load");
  const loaded = Date.now();
  await rowHas(NODE2, MODEL + " (hot)");
  console.log("HOT_MS " + (Date.now() - loaded));
  await shot("3-model-hot");

  // A killed node disappears within seconds.
  await step("kill");
  const killed = Date.now();
  await page.waitForFunction((id) => !document.querySelector(`tr[data-id="${id}"]`), NODE1, { timeout: 15000 });
  console.log("GONE_MS " + (Date.now() - killed));
  await shot("4-node-killed");

  // My models: versions, grants, where each is hot, the audit log and its chain.
  await tab("models");
  await page.waitForSelector(`tr[data-model="${MODEL}"]`);
  const mine = await page.textContent(`tr[data-model="${MODEL}"]`);
  check(mine.includes(NODE2) && !mine.includes(NODE1), "hot on the live node only: " + mine);
  check((await page.textContent("#chain")).includes("audit chain verifies"), "the audit chain verifies");
  await shot("5-models");

  // The farm: hosts, and the job with its receipt.
  await tab("farm");
  await page.waitForSelector(`tr[data-job="${JOB}"] .receipt`, { timeout: 10000 });
  const job = await page.textContent(`tr[data-job="${JOB}"]`);
  check(job.includes("signed by the host's evidence") && job.includes("confidential"), "the job's receipt: " + job);
  await shot("6-farm");
  await tab("fed");
  await shot("7-federation");
  await tab("pools");
  await shot("8-pools");

  // Another user signs in: the first user's model is not theirs to see.
  await page.click("#signout");
  await page.waitForSelector("#signin:not([hidden])");
  await page.fill("#token", TOKEN_B);
  await page.click("#signin-form button");
  await page.waitForSelector("#tabs:not([hidden])");
  await tab("models");
  await page.waitForFunction(() => document.getElementById("view").textContent.includes("My models ("));
  check(!(await page.textContent("#view")).includes(MODEL), "another user's model is not shown");
  const asB = await page.evaluate(async () => (await fetch("/ui/api/models")).text());
  check(!asB.includes(MODEL), "nor given by the API: " + asB.slice(0, 200));
  await shot("9-other-user");

  check(errors.length === 0, "page errors or CSP violations: " + errors.join(" | "));
  console.log("DONE");
  await browser.close();
  process.exit(0); // stdin stays open otherwise
} catch (e) {
  await shot("failure").catch(() => {});
  // What the page shows and what the API says now, to tell a late event from a wrong answer.
  const shown = await page.evaluate((id) => (document.querySelector(`tr[data-id="${id}"]`) || {}).textContent, NODE2).catch(() => "?");
  const api = await page.evaluate(async () => (await fetch("/ui/api/enclaves")).text()).catch(() => "?");
  console.log("SHOWN " + shown);
  console.log("EVENTS " + (await page.evaluate(() => JSON.stringify({ now: Date.now(), events: window.__events, drawn: document.getElementById("view").dataset.drawn })).catch(() => "?")));
  console.log("API " + api.slice(0, 3000));
  console.log("FAILED " + e.message);
  await browser.close();
  process.exit(1);
}
