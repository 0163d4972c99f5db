// ComfyUI-PuLID-Flux: Load identity carries the fingerprint of the identity picked in identity_file, so a server
// whose file of that name holds another identity (a stale copy on a worker) refuses the prompt instead of using it.
// When identity_file changes, and once for a node whose fingerprint is empty (a new node, a workflow saved before
// the widget existed), this asks the server that serves the UI for the file's fingerprint
// (GET /pulid_flux/identities/fingerprint?name=...) and writes it into the fingerprint widget. A saved fingerprint is
// never replaced on load: it names the identity chosen when the workflow was made.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_CLASS = "PulidFluxLoadIdentity";
const ROUTE = "/pulid_flux/identities/fingerprint?name=";

function widgetNamed(node, name) {
  return (node.widgets || []).find((w) => w && w.name === name);
}

async function fingerprintOf(name) {
  try {
    const response = await api.fetchApi(ROUTE + encodeURIComponent(name));
    if (!response.ok) return "";
    const reply = await response.json();
    return typeof reply.fingerprint === "string" ? reply.fingerprint : "";
  } catch (error) {
    console.warn("PuLID-Flux: no fingerprint for identity", name, error);
    return "";
  }
}

// Write the fingerprint of the file identity_file names now; an answer for an older choice is dropped.
async function fill(node, fileWidget, printWidget) {
  const name = fileWidget.value;
  printWidget.value = "";
  if (typeof name !== "string" || !name) return;
  const fingerprint = await fingerprintOf(name);
  if (fileWidget.value !== name) return;
  printWidget.value = fingerprint;
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "PuLIDFlux.IdentityFingerprint",
  nodeCreated(node) {
    if (node?.comfyClass !== NODE_CLASS) return;
    const fileWidget = widgetNamed(node, "identity_file");
    const printWidget = widgetNamed(node, "fingerprint");
    if (!fileWidget || !printWidget) return; // a server without the widget: nothing to fill
    let chosen = fileWidget.value;
    const changed = () => {
      if (fileWidget.value === chosen) return;
      chosen = fileWidget.value;
      fill(node, fileWidget, printWidget);
    };
    const callback = fileWidget.callback;
    fileWidget.callback = function (...args) {
      const result = callback?.apply(this, args);
      changed();
      return result;
    };
    const onWidgetChanged = node.onWidgetChanged;
    node.onWidgetChanged = function (...args) {
      const result = onWidgetChanged?.apply(this, args);
      if (args[0] === "identity_file") changed();
      return result;
    };
    // After a workflow is loaded its saved values are in place; only an empty fingerprint is filled.
    setTimeout(() => {
      chosen = fileWidget.value;
      if (!printWidget.value) fill(node, fileWidget, printWidget);
    }, 0);
  },
});
