{{/*
Names, labels and the pieces every fairlane pod shares. Values are validated twice: their
shape by values.schema.json, their relations (which JSON Schema cannot say) by
"fairlane.validate" below, so that a bad values file stops the render with one clear message.
*/}}

{{- define "fairlane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fairlane.fullname" -}}
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

{{/* A name derived from the full name: (list $ "suffix"). */}}
{{- define "fairlane.componentName" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "fairlane.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fairlane.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fairlane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fairlane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fairlane.labels" -}}
helm.sh/chart: {{ include "fairlane.chart" . }}
{{ include "fairlane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fairlane
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component: (list $ "worker" "default"), the group name only for workers. */}}
{{- define "fairlane.componentSelectorLabels" -}}
{{- $root := index . 0 -}}
{{ include "fairlane.selectorLabels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- if gt (len .) 2 }}
fairlane/worker-group: {{ index . 2 }}
{{- end }}
{{- end }}

{{- define "fairlane.componentLabels" -}}
{{- $root := index . 0 -}}
{{ include "fairlane.labels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- if gt (len .) 2 }}
fairlane/worker-group: {{ index . 2 }}
{{- end }}
{{- end }}

{{- define "fairlane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fairlane.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fairlane.secretName" -}}
{{- default (include "fairlane.fullname" .) .Values.connections.existingSecret }}
{{- end }}

{{- define "fairlane.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Paths the image makes writable (Dockerfile); emptyDir volumes are mounted there. */}}
{{- define "fairlane.metricsDir" -}}/var/lib/fairlane/metrics{{- end }}
{{- define "fairlane.resultsDir" -}}/var/lib/fairlane/results{{- end }}

{{/*
One fairlane setting as an env value: objects and lists as JSON (settings.py decodes them),
`lanes` and `webhook_allowed_networks` as the comma-separated lists they parse, scalars as
strings. (list "name" value)
*/}}
{{- define "fairlane.settingValue" -}}
{{- $name := index . 0 }}
{{- $value := index . 1 }}
{{- if and (has $name (list "lanes" "webhook_allowed_networks")) (kindIs "slice" $value) }}
{{- join "," $value }}
{{- else if or (kindIs "map" $value) (kindIs "slice" $value) }}
{{- toJson $value }}
{{- else if kindIs "float64" $value }}
{{- include "fairlane.number" $value }}
{{- else }}
{{- toString $value }}
{{- end }}
{{- end }}

{{/* A number as text: YAML numbers arrive as float64, and 600 must not become 6e+02. */}}
{{- define "fairlane.number" -}}
{{- $value := float64 . }}
{{- if eq $value (floor $value) }}{{ int64 $value }}{{ else }}{{ $value }}{{ end }}
{{- end }}

{{/* A PodDisruptionBudget count: an integer, or a percentage such as "25%". */}}
{{- define "fairlane.intOrPercent" -}}
{{- if kindIs "string" . }}{{ . | quote }}{{ else }}{{ . | int }}{{ end }}
{{- end }}

{{/* The ConfigMap's data: every FAIRLANE_* setting the chart manages or the user set. */}}
{{- define "fairlane.configData" -}}
FAIRLANE_AUTO_MIGRATE: "false"
FAIRLANE_METRICS_PORT: {{ .Values.ports.metrics | int | quote }}
FAIRLANE_HEALTH_PORT: {{ .Values.ports.health | int | quote }}
FAIRLANE_METRICS_DIR: {{ include "fairlane.metricsDir" . | quote }}
FAIRLANE_RESULTS_DIR: {{ include "fairlane.resultsDir" . | quote }}
{{- range $name, $value := .Values.config }}
{{- if not (kindIs "invalid" $value) }}
{{ printf "FAIRLANE_%s" (upper $name) }}: {{ include "fairlane.settingValue" (list $name $value) | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Secret's data (base64), when the chart manages it. */}}
{{- define "fairlane.secretData" -}}
FAIRLANE_DATABASE_URL: {{ .Values.connections.databaseUrl | b64enc | quote }}
FAIRLANE_BROKER_URL: {{ .Values.connections.brokerUrl | b64enc | quote }}
{{- end }}

{{/*
Relations between values that the schema cannot express. configmap.yaml, which every release
renders, includes it: a failure stops the whole render with the message.
*/}}
{{- define "fairlane.validate" -}}
{{- $c := .Values.connections }}
{{- if $c.existingSecret }}
{{- if or $c.databaseUrl $c.brokerUrl }}
{{- fail "fairlane: connections.existingSecret is set, so leave connections.databaseUrl and connections.brokerUrl empty (the URLs come from that Secret)" }}
{{- end }}
{{- else if not (and $c.databaseUrl $c.brokerUrl) }}
{{- fail "fairlane: set connections.databaseUrl and connections.brokerUrl (written to a Secret), or connections.existingSecret (a Secret you manage holding both)" }}
{{- end }}
{{- $names := dict }}
{{- range $index, $group := (include "fairlane.workerGroups" . | fromYaml).groups }}
{{- if hasKey $names $group.name }}
{{- fail (printf "fairlane: workerGroups[%d]: the name %q is used twice; every worker group needs its own name" $index $group.name) }}
{{- end }}
{{- $_ := set $names $group.name true }}
{{- $timeout := float64 $group.shutdownTimeout }}
{{- if hasKey $group "terminationGracePeriodSeconds" }}
{{- if le (float64 $group.terminationGracePeriodSeconds) $timeout }}
{{- fail (printf "fairlane: workerGroups[%d] (%s): terminationGracePeriodSeconds (%v) must be larger than shutdownTimeout (%v), or Kubernetes kills running jobs before the worker's graceful shutdown ends; raise terminationGracePeriodSeconds (e.g. to %d) or lower shutdownTimeout" $index $group.name $group.terminationGracePeriodSeconds $group.shutdownTimeout (add (int64 (ceil $timeout)) 30)) }}
{{- end }}
{{- end }}
{{- $scaling := $group.autoscaling }}
{{- if and (ne $scaling.type "none") (gt (int $scaling.minReplicas) (int $scaling.maxReplicas)) }}
{{- fail (printf "fairlane: workerGroups[%d] (%s): autoscaling.minReplicas (%v) is larger than autoscaling.maxReplicas (%v)" $index $group.name $scaling.minReplicas $scaling.maxReplicas) }}
{{- end }}
{{- if and (eq $scaling.type "hpa") (lt (int $scaling.minReplicas) 1) }}
{{- fail (printf "fairlane: workerGroups[%d] (%s): a HorizontalPodAutoscaler cannot scale to zero; set autoscaling.minReplicas to 1 or more, or use autoscaling.type keda" $index $group.name) }}
{{- end }}
{{- end }}
{{- if and .Values.api.ingress.enabled (not .Values.api.enabled) }}
{{- fail "fairlane: api.ingress.enabled needs api.enabled" }}
{{- end }}
{{- end }}

{{/*
(list dst src) as YAML: src's keys win, nested maps are merged the same way. Unlike sprig's
mergeOverwrite, a zero value in src (replicas: 0, enabled: false) still wins.
*/}}
{{- define "fairlane.deepMerge" -}}
{{- $dst := deepCopy (index . 0) }}
{{- range $key, $value := index . 1 }}
{{- if and (kindIs "map" $value) (kindIs "map" (get $dst $key)) }}
{{- $_ := set $dst $key (include "fairlane.deepMerge" (list (get $dst $key) $value) | fromYaml) }}
{{- else }}
{{- $_ := set $dst $key $value }}
{{- end }}
{{- end }}
{{- toYaml $dst }}
{{- end }}

{{/* The worker groups, each merged over workerDefaults: use as (include … | fromYaml).groups */}}
{{- define "fairlane.workerGroups" -}}
{{- $groups := list }}
{{- range .Values.workerGroups }}
{{- $groups = append $groups (include "fairlane.deepMerge" (list $.Values.workerDefaults .) | fromYaml) }}
{{- end }}
{{- toYaml (dict "groups" $groups) }}
{{- end }}

{{/* terminationGracePeriodSeconds of a worker group: given, or the shutdown timeout + 30 s. */}}
{{- define "fairlane.workerGracePeriod" -}}
{{- if hasKey . "terminationGracePeriodSeconds" }}
{{- .terminationGracePeriodSeconds | int64 }}
{{- else }}
{{- add (int64 (ceil (float64 .shutdownTimeout))) 30 }}
{{- end }}
{{- end }}

{{/*
The SQL of a worker group's KEDA trigger: its queues' jobs that are pending, retrying (both wait
in the ledger backlog) or dispatched (published, not started). Each predicate is spelled as the
partial indexes' own (ledger/schema.py), so PostgreSQL answers from those indexes.
*/}}
{{- define "fairlane.backlogQuery" -}}
{{- $quoted := list }}
{{- range .queues }}
{{- $quoted = append $quoted (printf "'%s'" (replace "'" "''" .)) }}
{{- end }}
{{- $in := join ", " $quoted }}
{{- printf "SELECT (SELECT count(*) FROM fairlane_jobs WHERE state IN ('pending', 'retrying') AND queue IN (%s)) + (SELECT count(*) FROM fairlane_jobs WHERE state = 'dispatched' AND queue IN (%s))" $in $in }}
{{- end }}

{{/*
The pod-level pieces every fairlane pod shares. (dict "root" $), with "serviceAccountName" to
use another account than the release's.
*/}}
{{- define "fairlane.podCommon" -}}
{{- $root := .root -}}
serviceAccountName: {{ .serviceAccountName | default (include "fairlane.serviceAccountName" $root) }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Volumes of every fairlane pod: a writable /tmp, the metrics and results directories. */}}
{{- define "fairlane.volumes" -}}
- name: tmp
  emptyDir: {}
- name: metrics
  emptyDir: {}
- name: results
{{- if .Values.results.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.results.existingClaim }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "fairlane.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: metrics
  mountPath: {{ include "fairlane.metricsDir" . }}
- name: results
  mountPath: {{ include "fairlane.resultsDir" . }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The container pieces every fairlane container shares: image, security context, the settings
ConfigMap and the two secret URLs by reference. (dict "root" $ "config" map "extraEnv" list
"configMap" name)
*/}}
{{- define "fairlane.containerCommon" -}}
{{- $root := .root -}}
image: {{ include "fairlane.image" $root }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
securityContext:
  {{- toYaml $root.Values.securityContext | nindent 2 }}
envFrom:
  - configMapRef:
      name: {{ .configMap }}
{{- with $root.Values.extraEnvFrom }}
  {{- toYaml . | nindent 2 }}
{{- end }}
env:
  - name: FAIRLANE_DATABASE_URL
    valueFrom:
      secretKeyRef:
        name: {{ .secret }}
        key: {{ ternary $root.Values.connections.existingSecretKeys.databaseUrl "FAIRLANE_DATABASE_URL" (not (empty $root.Values.connections.existingSecret)) }}
  - name: FAIRLANE_BROKER_URL
    valueFrom:
      secretKeyRef:
        name: {{ .secret }}
        key: {{ ternary $root.Values.connections.existingSecretKeys.brokerUrl "FAIRLANE_BROKER_URL" (not (empty $root.Values.connections.existingSecret)) }}
{{- range $name, $value := .config }}
{{- if not (kindIs "invalid" $value) }}
  - name: {{ printf "FAIRLANE_%s" (upper $name) }}
    value: {{ include "fairlane.settingValue" (list $name $value) | quote }}
{{- end }}
{{- end }}
{{- with $root.Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .extraEnv }}
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  {{- include "fairlane.volumeMounts" $root | nindent 2 }}
{{- end }}

{{/* Named ports of workers and the scheduler. */}}
{{- define "fairlane.observabilityPorts" -}}
- name: metrics
  containerPort: {{ .Values.ports.metrics }}
  protocol: TCP
- name: health
  containerPort: {{ .Values.ports.health }}
  protocol: TCP
{{- end }}

{{/* Startup, liveness and readiness probes on /livez and /readyz of the health port. */}}
{{- define "fairlane.healthProbes" -}}
{{- $p := .Values.probes -}}
startupProbe:
  httpGet:
    path: /livez
    port: health
  periodSeconds: {{ $p.startup.periodSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
  timeoutSeconds: {{ $p.startup.timeoutSeconds }}
livenessProbe:
  httpGet:
    path: /livez
    port: health
  periodSeconds: {{ $p.liveness.periodSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
readinessProbe:
  httpGet:
    path: /readyz
    port: health
  periodSeconds: {{ $p.readiness.periodSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
{{- end }}

{{/*
Scheduling of one component: node selector, tolerations, affinity and topology spread; the
default spread is across nodes (required when `requireNodeSpread`) and zones (preferred).
(dict "root" $ "spec" componentValues "selector" labels-yaml "requireNodeSpread" bool)
*/}}
{{- define "fairlane.scheduling" -}}
topologySpreadConstraints:
{{- if .spec.topologySpreadConstraints }}
  {{- toYaml .spec.topologySpreadConstraints | nindent 2 }}
{{- else }}
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: {{ ternary "DoNotSchedule" "ScheduleAnyway" (default false .requireNodeSpread) }}
    labelSelector:
      matchLabels:
        {{- .selector | nindent 8 }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- .selector | nindent 8 }}
{{- end }}
{{- with .spec.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .spec.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .spec.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
checkov findings the chart's defaults accept, each with its reason, as checkov.io/skip
annotations on the workload (see tests/chart/test_chart_checkov.py). A skip is only written
while the value that causes it is in effect.
*/}}
{{- define "fairlane.checkovSkips" -}}
{{- $skips := list "CKV_K8S_35=fairlane reads its settings, the two connection URLs included, only from FAIRLANE_* environment variables (settings.py); they come from a Secret by secretKeyRef, never a literal value" }}
{{- if not .Values.image.digest }}
{{- $skips = append $skips "CKV_K8S_43=the image is pinned by a version tag by default; set image.digest to pin it by digest" }}
{{- end }}
{{- if not .Values.networkPolicy.enabled }}
{{- $skips = append $skips "CKV2_K8S_6=networkPolicy.enabled is false: the operator manages the pods' network policy outside this chart" }}
{{- end }}
{{- if ne .Values.image.pullPolicy "Always" }}
{{- $skips = append $skips "CKV_K8S_15=a version tag or digest is immutable, so IfNotPresent starts pods without a registry round trip (a node loss must not wait on the registry); set image.pullPolicy Always to re-check credentials on every pull" }}
{{- end }}
{{- $lines := list }}
{{- range $index, $skip := $skips }}
{{- $lines = append $lines (printf "checkov.io/skip%d: %s" (add1 $index) (quote $skip)) }}
{{- end }}
{{- join "\n" $lines }}
{{- end }}
