{{/* Chart name, truncated to 63 characters. */}}
{{- define "automation-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name when it already contains the chart name.
The Deployment, Service and ServiceMonitor share it, so the scraped `job` label equals it.
*/}}
{{- define "automation-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart label value. */}}
{{- define "automation-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the life of the release, never the chart or app version. */}}
{{- define "automation-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "automation-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels. */}}
{{- define "automation-gateway.labels" -}}
helm.sh/chart: {{ include "automation-gateway.chart" . }}
{{ include "automation-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: automation-gateway
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "automation-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "automation-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image reference from an image block: repository@digest or repository:tag (tag defaults to appVersion). */}}
{{- define "automation-gateway.imageRef" -}}
{{- $img := index . 0 }}{{- $root := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (toString ($img.tag | default $root.Chart.AppVersion)) }}
{{- end }}
{{- end }}

{{/* Is more than one pod possible? */}}
{{- define "automation-gateway.multiReplica" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}true{{- end }}
{{- end }}

{{/*
Checks that cannot be expressed in values.schema.json. Included by the Deployment, so a bad
combination fails every render with a clear message.
*/}}
{{- define "automation-gateway.validate" -}}
{{- if eq .Values.database.type "sqlite" }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "database.type=sqlite supports exactly one replica, but replicaCount=%d: SQLite is a single-writer file on one pod's volume. Use database.type=postgres (database.postgres.existingSecret) to run several replicas." (int .Values.replicaCount)) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail "database.type=sqlite supports exactly one replica, so autoscaling.enabled=true is refused: use database.type=postgres to autoscale." }}
{{- end }}
{{- end }}
{{- if eq .Values.database.type "postgres" }}
{{- if not .Values.database.postgres.existingSecret }}
{{- fail "database.type=postgres needs database.postgres.existingSecret: the name of an existing Secret whose key database.postgres.secretKey holds the postgres:// URL (DATABASE_URL is never taken from values)." }}
{{- end }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas." }}
{{- end }}
{{- if and (not .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail "autoscaling.enabled=true needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage." }}
{{- end }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) }}
{{- fail "auth.enabled=true needs auth.existingSecret: the name of an existing Secret whose key auth.secretKey holds the tokens file (see the chart README, \"Authentication\"). Set auth.enabled=false to run the API without tokens." }}
{{- end }}
{{- if and .Values.metrics.requireToken (not .Values.auth.enabled) }}
{{- fail "metrics.requireToken=true needs auth.enabled=true: without a tokens file no token can be checked." }}
{{- end }}
{{- if and .Values.metrics.requireToken .Values.serviceMonitor.enabled (not .Values.metrics.scrapeToken.existingSecret) }}
{{- fail "metrics.requireToken=true with serviceMonitor.enabled=true needs metrics.scrapeToken.existingSecret: the Secret holding the token Prometheus sends (otherwise every scrape gets 401)." }}
{{- end }}
{{- include "automation-gateway.validateRunners" . }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add (int .Values.config.shutdownGraceSecs) (int .Values.preStopSleepSeconds)) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than config.shutdownGraceSecs (%d) + preStopSleepSeconds (%d), or running jobs are killed before they drain." (int .Values.terminationGracePeriodSeconds) (int .Values.config.shutdownGraceSecs) (int .Values.preStopSleepSeconds)) }}
{{- end }}
{{- end }}

{{/* Environment of the service container (also used by the migration step). */}}
{{- define "automation-gateway.env" -}}
- name: DATABASE_URL
{{- if eq .Values.database.type "postgres" }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.postgres.existingSecret }}
      key: {{ .Values.database.postgres.secretKey }}
{{- else }}
  value: {{ printf "sqlite://%s?mode=rwc" .Values.database.sqlite.path | quote }}
{{- end }}
- name: GATEWAY_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .Values.containerPort) | quote }}
- name: GATEWAY_SHUTDOWN_GRACE_SECS
  value: {{ .Values.config.shutdownGraceSecs | quote }}
- name: GATEWAY_LEASE_SECS
  value: {{ .Values.config.leaseSecs | quote }}
- name: GATEWAY_RETENTION_DAYS
  value: {{ .Values.config.retentionDays | quote }}
- name: GATEWAY_MAX_CONNECTIONS
  value: {{ .Values.config.maxConnections | quote }}
{{- if .Values.config.sqliteMaxSizeMb }}
- name: GATEWAY_SQLITE_MAX_SIZE_MB
  value: {{ .Values.config.sqliteMaxSizeMb | quote }}
{{- end }}
{{- if .Values.config.workers }}
- name: GATEWAY_WORKERS
  value: {{ .Values.config.workers | quote }}
{{- end }}
{{- if .Values.config.maxPending }}
- name: GATEWAY_MAX_PENDING
  value: {{ .Values.config.maxPending | quote }}
{{- end }}
{{- if .Values.config.simDurationMs }}
- name: GATEWAY_SIM_DURATION_MS
  value: {{ .Values.config.simDurationMs | quote }}
{{- end }}
{{- if .Values.config.simFailureRate }}
- name: GATEWAY_SIM_FAILURE_RATE
  value: {{ .Values.config.simFailureRate | quote }}
{{- end }}
{{- if .Values.config.actionPolicy }}
- name: GATEWAY_ACTION_POLICY
  value: {{ .Values.config.actionPolicy | quote }}
{{- end }}
{{- if .Values.config.dbMaxConnections }}
- name: GATEWAY_DB_MAX_CONNECTIONS
  value: {{ .Values.config.dbMaxConnections | quote }}
{{- end }}
- name: RUST_LOG
  value: {{ .Values.config.logLevel | quote }}
{{- if .Values.config.lokiUrl }}
- name: LOKI_URL
  value: {{ .Values.config.lokiUrl | quote }}
- name: GATEWAY_ENV
  value: {{ .Values.config.environment | default .Release.Namespace | quote }}
{{- end }}
{{- if .Values.config.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.config.otlpEndpoint | quote }}
{{- end }}
{{- if .Values.auth.enabled }}
- name: GATEWAY_AUTH_TOKENS_FILE
  value: {{ printf "%s/%s" (trimSuffix "/" .Values.auth.mountPath) .Values.auth.secretKey | quote }}
{{- if .Values.metrics.requireToken }}
- name: GATEWAY_METRICS_REQUIRE_TOKEN
  value: "true"
{{- end }}
{{- end }}
{{- with .Values.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Namespace of the dashboard ConfigMaps. */}}
{{- define "automation-gateway.dashboardNamespace" -}}
{{- .Values.grafanaDashboard.namespace | default .Release.Namespace }}
{{- end }}

{{/* Directory of the actions ConfigMap and path of the actions file inside the container. */}}
{{- define "automation-gateway.actionsDir" -}}/etc/automation-gateway/actions{{- end }}
{{- define "automation-gateway.actionsPath" -}}{{ include "automation-gateway.actionsDir" . }}/actions.yaml{{- end }}

{{/* Directory under which each runnerSecrets entry is mounted as <dir>/<name>/. */}}
{{- define "automation-gateway.runnerSecretsDir" -}}/etc/automation-gateway/secrets{{- end }}

{{/* Name of the actions ConfigMap. */}}
{{- define "automation-gateway.actionsConfigMapName" -}}
{{- include "automation-gateway.fullname" . | trunc 55 | trimSuffix "-" }}-actions
{{- end }}

{{/*
The actions file: `actions: <.Values.actions>`. The ConfigMap holds exactly this text and the pod
annotation checksum/actions is its sha256.
*/}}
{{- define "automation-gateway.actionsFile" -}}
{{- dict "actions" .Values.actions | toYaml }}
{{- end }}

{{/* Is RBAC for the kubernetes runner rendered (so the pods need the ServiceAccount token)? */}}
{{- define "automation-gateway.kubernetesRbac" -}}
{{- if or .Values.kubernetesRunner.rbac.clusterWide .Values.kubernetesRunner.rbac.namespaces }}true{{- end }}
{{- end }}

{{/* Name of the kubernetes runner's Role(s) and RoleBinding(s). */}}
{{- define "automation-gateway.kubernetesRunnerRoleName" -}}
{{- include "automation-gateway.fullname" . }}-kubernetes-runner
{{- end }}

{{/* ClusterRole(Binding) names are cluster-wide: the release namespace keeps two releases apart. */}}
{{- define "automation-gateway.kubernetesRunnerClusterRoleName" -}}
{{- printf "%s-%s-kubernetes-runner" .Release.Namespace (include "automation-gateway.fullname" .) }}
{{- end }}

{{/* Checks of the runner values (actions, runnerSecrets, kubernetesRunner) beyond the schema. */}}
{{- define "automation-gateway.validateRunners" -}}
{{- $rbac := .Values.kubernetesRunner.rbac }}
{{- if and $rbac.clusterWide $rbac.namespaces }}
{{- fail "kubernetesRunner.rbac: set either namespaces (a Role per namespace) or clusterWide=true (one ClusterRole), not both." }}
{{- end }}
{{- if and (include "automation-gateway.kubernetesRbac" .) (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) }}
{{- fail "kubernetesRunner.rbac needs a ServiceAccount of its own: set serviceAccount.create=true or serviceAccount.name (the chart will not grant rights to the namespace's `default` ServiceAccount)." }}
{{- end }}
{{- if and (include "automation-gateway.kubernetesRbac" .) .Values.networkPolicy.enabled (not .Values.networkPolicy.allowExternalEgress) (not .Values.networkPolicy.kubernetesApi.cidr) (not .Values.networkPolicy.extraEgress) }}
{{- fail "kubernetesRunner.rbac is on but the NetworkPolicy blocks the API server: set networkPolicy.kubernetesApi.cidr (the API server endpoints) or an networkPolicy.extraEgress rule, or networkPolicy.allowExternalEgress=true." }}
{{- end }}
{{- $secretsDir := include "automation-gateway.runnerSecretsDir" . }}
{{- $mounted := dict }}
{{- range .Values.runnerSecrets }}
{{- if hasKey $mounted .name }}
{{- fail (printf "runnerSecrets: the name %q is used twice (each entry is its own directory %s/<name>)." .name $secretsDir) }}
{{- end }}
{{- $_ := set $mounted .name (.key | default "") }}
{{- end }}
{{- if .Values.actions }}
{{- range $name, $action := .Values.actions }}
{{- $block := get $action $action.runner }}
{{- if kindIs "map" $block }}
{{- range $field := list "token_file" "ca_file" }}
{{- $path := get $block $field | toString }}
{{- if hasPrefix (printf "%s/" $secretsDir) $path }}
{{- $rest := trimPrefix (printf "%s/" $secretsDir) $path }}
{{- $parts := splitList "/" $rest }}
{{- $secret := first $parts }}
{{- $file := rest $parts | join "/" }}
{{- if not (hasKey $mounted $secret) }}
{{- fail (printf "actions.%s.%s.%s: %s is under %s/ but runnerSecrets has no entry named %q (add {name: %s, secretName: ..., key: ...})." $name $action.runner $field $path $secretsDir $secret $secret) }}
{{- end }}
{{- $key := get $mounted $secret }}
{{- if not $file }}
{{- fail (printf "actions.%s.%s.%s: %s is the directory of runnerSecrets entry %q, not a file in it." $name $action.runner $field $path $secret) }}
{{- end }}
{{- if and $key (ne $key $file) }}
{{- fail (printf "actions.%s.%s.%s: %s names the file %q, but runnerSecrets entry %q mounts only the key %q." $name $action.runner $field $path $file $secret $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.config.actionPolicy }}
{{- range (splitList "," .Values.config.actionPolicy) }}
{{- $given := (splitList "." (trim .)) | first }}
{{- if and $given (not (hasKey $.Values.actions $given)) }}
{{- fail (printf "config.actionPolicy names the action %q, which the actions catalog (actions) does not define; the service would refuse to start. Defined: %s." $given (keys $.Values.actions | sortAlpha | join ", ")) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
