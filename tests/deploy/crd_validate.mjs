// Fallback CRD validator for fresh clones without ../shared/schemas: reads one custom resource as
// JSON on stdin and validates it with the npm @kubernetes-models/* models (installed by run.sh into
// tests/deploy/.npm). Exit 0 when valid; exit 1 with the errors on stdout otherwise.
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const MODELS = {
  "monitoring.coreos.com/v1/ServiceMonitor": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
  "monitoring.coreos.com/v1/PrometheusRule": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule",
  "monitoring.coreos.com/v1alpha1/AlertmanagerConfig": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1alpha1/AlertmanagerConfig",
  "argoproj.io/v1alpha1/Application": "@kubernetes-models/argo-cd/argoproj.io/v1alpha1/Application",
  "argoproj.io/v1alpha1/AppProject": "@kubernetes-models/argo-cd/argoproj.io/v1alpha1/AppProject",
};

const doc = JSON.parse(readFileSync(0, "utf8"));
const spec = MODELS[`${doc.apiVersion}/${doc.kind}`];
if (!spec) {
  console.log(`no model for ${doc.apiVersion} ${doc.kind}`);
  process.exit(1);
}
// The packages are ES modules installed outside this repository: import the model file directly.
const base = path.join(process.env.AG_NPM_DIR || process.cwd(), "node_modules", spec);
const file = [".mjs", ".js"].map((ext) => base + ext).find((f) => existsSync(f));
if (!file) {
  console.log(`model file not found for ${spec} under ${base}`);
  process.exit(1);
}
const mod = await import(pathToFileURL(file).href);
const Model = mod[doc.kind] ?? mod.default;
try {
  new Model(doc).validate();
} catch (err) {
  console.log(String(err && err.message ? err.message : err));
  process.exit(1);
}
