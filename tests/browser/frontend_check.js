// Drives ComfyUI's own frontend in headless Chromium (playwright-core, the system's /usr/bin/chromium) against a
// server that has this pack, and writes what a person would see as JSON: the pack's node definitions, each example
// workflow loaded through app.loadGraphData, the node documentation panel, and the zh locale. The Python test
// (tests/test_browser_frontend.py) prepares the server and the expectations and asserts on the report.
// Usage: node frontend_check.js CONFIG.json REPORT.json
'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf-8'));
const reportPath = process.argv[3];
const report = { phases: {}, startup: {}, steps: [] };
// After loadGraphData the frontend checks models, pictures and missing nodes asynchronously (server lists, registry
// lookups): a load is settled when no request has been in flight for QUIET_MS (at most SETTLE_MAX_MS).
const QUIET_MS = 500;
const SETTLE_MAX_MS = 5000;

function save() {
  fs.writeFileSync(reportPath, JSON.stringify(report, null, 1));
}

function step(name) {
  report.steps.push(`${new Date().toISOString()} ${name}`);
  save();
}

async function main() {
  const browser = await chromium.launch({
    executablePath: config.chromium,
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--lang=en-US'],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 }, locale: 'en-US' });
  try {
    await run(page);
  } catch (e) {
    report.fatal_screenshot = 'fatal.png';
    await page.screenshot({ path: path.join(config.screenshots, 'fatal.png') }).catch(() => {});
    throw e;
  } finally {
    await browser.close();
  }
}

// Console errors, uncaught page errors and failed requests, gathered per phase (startup is reported apart: the
// frontends log their own first-run 404s, e.g. user.css, before any workflow is loaded).
let events = [];
let inFlight = 0;
let lastActivity = Date.now();
function watch(page) {
  const done = () => { inFlight = Math.max(0, inFlight - 1); lastActivity = Date.now(); };
  page.on('request', () => { inFlight += 1; lastActivity = Date.now(); });
  page.on('requestfinished', done);
  page.on('requestfailed', done);
  page.on('console', (m) => {
    if (m.type() === 'error') events.push(`console: ${m.text().slice(0, 500)} (${(m.location() || {}).url || ''})`);
  });
  page.on('pageerror', (e) => events.push(`pageerror: ${String(e.stack || e.message).slice(0, 800)}`));
  page.on('requestfailed', (r) => events.push(`requestfailed: ${r.url()} ${r.failure() && r.failure().errorText}`));
  page.on('response', (r) => { if (r.status() >= 400) events.push(`http ${r.status()}: ${r.url()}`); });
}
function takeEvents() {
  const taken = events;
  events = [];
  return taken;
}

async function settle(page) {
  const start = Date.now();
  await page.waitForTimeout(QUIET_MS);
  while (Date.now() - start < SETTLE_MAX_MS && (inFlight > 0 || Date.now() - lastActivity < QUIET_MS)) {
    await page.waitForTimeout(100);
  }
}

async function ready(page) {
  await page.waitForFunction(
    () => window.app && window.app.vueAppReady && window.app.graph && window.LiteGraph &&
      Object.keys(window.LiteGraph.registered_node_types).length > 0,
    null, { timeout: 90000 });
  await page.waitForTimeout(500);
}

// Visible dialogs, toasts and alerts: where both frontends report missing nodes ("Some Nodes Are Missing" dialog in
// 1.27, a "Missing node" status toast in 1.47).
async function visibleMessages(page) {
  return page.evaluate(() => Array.from(document.querySelectorAll(
    '[role=dialog], [role=alertdialog], [role=alert], [role=status], .p-dialog, .p-toast-message'))
    .filter((e) => e.offsetParent !== null || getComputedStyle(e).position === 'fixed')
    .map((e) => e.innerText.trim()).filter((t) => t.length > 0));
}

async function dismissMessages(page) {
  for (let i = 0; i < 3; i++) await page.keyboard.press('Escape');
}

async function loadWorkflow(page, workflow) {
  takeEvents();
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, workflow);
  await settle(page);
  const graph = await page.evaluate(() => {
    const root = window.app.rootGraph || window.app.graph;
    const graphs = [root, ...(root.subgraphs ? Array.from(root.subgraphs.values()) : [])];
    const nodes = graphs.flatMap((g) => g.nodes || g._nodes || []);
    return {
      node_count: (root.nodes || root._nodes).length,
      types: nodes.map((n) => n.type),
      missing: nodes.filter((n) => !(n.type in window.LiteGraph.registered_node_types)).map((n) => n.type),
    };
  });
  const messages = (await visibleMessages(page)).filter((t) => /missing|not found|缺失|未找到/i.test(t));
  return { ...graph, messages, errors: takeEvents() };
}

async function nodeDefinitions(page) {
  return page.evaluate(({ classes, module }) => {
    const types = window.LiteGraph.registered_node_types;
    const fromPack = Object.keys(types).filter((t) => types[t].nodeData &&
      types[t].nodeData.python_module === module);
    const out = {};
    for (const name of classes) {
      const ctor = window.LiteGraph.registered_node_types[name];
      out[name] = ctor ? {
        display_name: ctor.nodeData && ctor.nodeData.display_name,
        title: ctor.title,
        description: ctor.nodeData && ctor.nodeData.description,
        category: ctor.nodeData && ctor.nodeData.category,
        python_module: ctor.nodeData && ctor.nodeData.python_module,
      } : null;
    }
    return { from_pack: fromPack, nodes: out };
  }, { classes: config.node_classes, module: config.python_module });
}

// A blank graph with one node of `type` at a known place, drawn at scale 1; returns its id.
async function placeNode(page, type) {
  return page.evaluate(async (type) => {
    const { app, LiteGraph } = window;
    app.graph.clear();
    const node = LiteGraph.createNode(type);
    node.pos = [360, 160];
    app.graph.add(node);
    app.canvas.ds.offset = [0, 0];
    app.canvas.ds.scale = 1;
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    return node.id;
  }, type);
}

// Select the node and press the selection toolbox's info button (data-testid="info-button" in both frontends);
// the documentation panel renders the page into .node-help-content .markdown-content, or falls back to the node's
// description and input table (.fallback-content) when the page cannot be fetched.
async function openHelp(page, type, shotName) {
  takeEvents();
  await page.evaluate((type) => {
    const node = window.app.graph.nodes.find((n) => n.type === type);
    window.app.canvas.deselectAll && window.app.canvas.deselectAll();
    window.app.canvas.selectNode(node);
    window.app.canvas.setDirty(true, true);
  }, type);
  const button = page.locator('[data-testid="info-button"]').first();
  await button.waitFor({ state: 'visible', timeout: 15000 });
  await button.click({ timeout: 15000 });
  const content = page.locator('.node-help-content').first();
  await content.waitFor({ state: 'visible', timeout: 15000 });
  await page.waitForFunction(() => {
    const c = document.querySelector('.node-help-content');
    return c && (c.querySelector('.markdown-content') || c.querySelector('.fallback-content'));
  }, null, { timeout: 15000 });
  await page.waitForFunction(() => Array.from(document.querySelectorAll('.node-help-content img'))
    .every((img) => img.complete), null, { timeout: 15000 });
  await page.waitForTimeout(300);
  const panel = await page.evaluate(() => {
    const c = document.querySelector('.node-help-content');
    const md = c.querySelector('.markdown-content');
    return {
      rendered: Boolean(md),
      fallback: Boolean(c.querySelector('.fallback-content')),
      text: c.innerText,
      headings: md ? Array.from(md.querySelectorAll('h1,h2,h3,h4,h5,h6')).map((h) => h.innerText.trim()) : [],
      images: md ? Array.from(md.querySelectorAll('img')).map((img) => ({
        src: img.src, loaded: img.complete && img.naturalWidth > 0,
      })) : [],
      visible: c.getBoundingClientRect().width > 100 && c.getBoundingClientRect().height > 100,
    };
  });
  await page.screenshot({ path: path.join(config.screenshots, shotName) });
  panel.screenshot = shotName;
  panel.errors = takeEvents();
  await page.keyboard.press('Escape');
  return panel;
}

// Hover the widget (or the input slot) named `input` on a freshly placed node and read the canvas tooltip.
async function hoverTooltip(page, type, input, shotName) {
  await placeNode(page, type);
  const where = await page.evaluate(({ type, input }) => {
    const { app } = window;
    const node = app.graph.nodes.find((n) => n.type === type);
    const rect = app.canvas.canvas.getBoundingClientRect();
    const toClient = (p) => {
      const c = app.canvas.ds.convertOffsetToCanvas(p);
      const ratio = app.canvas.canvas.width / rect.width;
      return [rect.left + c[0] / ratio, rect.top + c[1] / ratio];
    };
    const widget = (node.widgets || []).find((w) => w.name === input);
    if (widget && typeof widget.y === 'number' && widget.y > 0) {
      const height = widget.computedHeight || window.LiteGraph.NODE_WIDGET_HEIGHT || 20;
      return { kind: 'widget', xy: toClient([node.pos[0] + node.size[0] * 0.35, node.pos[1] + widget.y + height / 2]) };
    }
    const slot = (node.inputs || []).findIndex((s) => s.name === input);
    if (slot >= 0) {
      const p = node.getConnectionPos(true, slot);
      return { kind: 'slot', xy: toClient([p[0] + 6, p[1]]) };
    }
    return null;
  }, { type, input });
  if (!where) return { found: false };
  const delay = await page.evaluate(() => window.app.extensionManager.setting.get('LiteGraph.Node.TooltipDelay'));
  await page.mouse.move(where.xy[0] - 2, where.xy[1]);
  await page.mouse.move(where.xy[0], where.xy[1], { steps: 2 });
  const tip = page.locator('.node-tooltip').first();
  let text = null;
  try {
    await page.waitForFunction(() => {
      const t = document.querySelector('.node-tooltip');
      return t && t.offsetParent !== null && t.innerText.trim().length > 0;
    }, null, { timeout: (delay || 500) + 4000 });
    text = (await tip.innerText()).trim();
  } catch (e) {
    text = null;
  }
  await page.screenshot({ path: path.join(config.screenshots, shotName) });
  return { found: true, kind: where.kind, text, screenshot: shotName };
}

// The node library sidebar (its own command in both frontends), every folder on the pack's category paths opened,
// the given node scrolled into view; returns the sidebar's visible text.
async function nodeLibrary(page, categories, scrollTo, shotName) {
  await page.evaluate(async () => {
    const tabs = window.app.extensionManager.sidebarTab;
    if (!tabs || tabs.activeSidebarTabId !== 'node-library') {  // the open tab survives a reload
      await window.app.extensionManager.command.execute('Workspace.ToggleSidebarTab.node-library');
    }
  });
  const side = page.locator('.side-bar-panel, .sidebar-content-container, [data-testid="node-library-tree"]').first();
  await side.waitFor({ state: 'visible', timeout: 15000 });
  await page.waitForTimeout(500);
  const opened = new Set();
  for (const category of categories) {
    const parts = category.split('/');
    for (let i = 0; i < parts.length; i++) {
      const key = parts.slice(0, i + 1).join('/');
      if (opened.has(key)) continue;
      opened.add(key);
      const folder = side.getByText(parts[i], { exact: true }).last();
      await folder.scrollIntoViewIfNeeded();
      try {
        await folder.click({ timeout: 5000 });
      } catch (e) {
        // On a loaded machine 1.47's tree can keep re-laying out (never "stable" for Playwright); the text checks
        // after this still prove the folder opened.
        step(`folder ${key}: clicked without waiting for a stable layout`);
        await folder.click({ force: true });
      }
      await page.waitForTimeout(300);
    }
  }
  const item = side.getByText(scrollTo, { exact: true }).first();
  await item.scrollIntoViewIfNeeded();
  await page.waitForTimeout(300);
  const text = await side.innerText();
  const box = await side.boundingBox();
  await page.screenshot({ path: path.join(config.screenshots, shotName) });
  await page.screenshot({ path: path.join(config.screenshots, 'sidebar-' + shotName), clip: box });
  return { text, screenshot: shotName };
}

async function setLocale(page, locale) {
  await page.evaluate(async (locale) => { await window.app.extensionManager.setting.set('Comfy.Locale', locale); },
    locale);
  await page.reload();
  await ready(page);
  await dismissMessages(page);
  return page.evaluate(() => window.app.extensionManager.setting.get('Comfy.Locale'));
}

async function run(page) {
  watch(page);
  step('open');
  await page.goto(config.url);
  await ready(page);
  report.frontend_version = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ || null);
  report.startup.errors = takeEvents();
  report.startup.locale = await page.evaluate(() => window.app.extensionManager.setting.get('Comfy.Locale'));

  step('node definitions (en)');
  report.definitions_en = await nodeDefinitions(page);

  step('example workflows');
  report.workflows = {};
  for (const [name, workflow] of Object.entries(config.workflows)) {
    report.workflows[name] = await loadWorkflow(page, workflow);
    step(`workflow ${name}`);
    await dismissMessages(page);
  }

  step('docs panel (en)');
  await placeNode(page, config.docs_node);
  report.help_en = await openHelp(page, config.docs_node, 'help-en.png');

  // The control: a workflow with one node type nobody defines must be caught by the same checks.
  step('missing-node control');
  report.control = await loadWorkflow(page, config.control_workflow);
  await dismissMessages(page);
  // The frontend restores the open workflow after a reload: leave a valid one open, not the control.
  await loadWorkflow(page, config.workflows[Object.keys(config.workflows)[0]]);
  await dismissMessages(page);

  step('zh');
  report.zh = { locale: await setLocale(page, 'zh') };
  report.zh.errors_on_reload = takeEvents();
  report.zh.definitions = await nodeDefinitions(page);
  report.zh.titles = await page.evaluate((classes) => {
    window.app.graph.clear();
    const out = {};
    for (const name of classes) {
      const node = window.LiteGraph.createNode(name);
      out[name] = node ? node.title : null;
    }
    return out;
  }, config.node_classes);
  report.zh.tooltip = await hoverTooltip(page, config.zh_tooltip.node, config.zh_tooltip.input, 'tooltip-zh.png');
  const zhNodes = report.zh.definitions.nodes;
  const categories = [...new Set(Object.values(zhNodes).filter(Boolean).map((d) => d.category))];
  const applyTitle = zhNodes[config.docs_node] && zhNodes[config.docs_node].display_name;
  report.zh.library = await nodeLibrary(page, categories, applyTitle, 'library-zh.png');
  await placeNode(page, config.docs_node);
  report.zh.help = await openHelp(page, config.docs_node, 'help-zh.png');
  report.zh.errors = takeEvents();
  step('done');
  report.done = true;
  save();
}

main().catch((e) => {
  report.fatal = String(e.stack || e);
  save();
  process.exitCode = 1;
});
