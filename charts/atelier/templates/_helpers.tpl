{{/*
Helpers of the atelier chart. Every helper is prefixed with the chart name.
*/}}

{{/* The chart name. */}}
{{- define "atelier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The full name: <release>-<chart>, or <release> when it already holds the chart name. */}}
{{- define "atelier.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* chart label value: <name>-<version>. */}}
{{- define "atelier.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
A component's object name: the full name cut so that "-<component>" still fits 63.
Usage: include "atelier.componentName" (list . "serving")
*/}}
{{- define "atelier.componentName" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $max := sub 62 (len $component) | int -}}
{{- printf "%s-%s" (include "atelier.fullname" $root | trunc $max | trimSuffix "-") $component -}}
{{- end -}}

{{/* Selector labels: a subset of atelier.labels. Usage: include "atelier.selectorLabels" (list . "serving") */}}
{{- define "atelier.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "atelier.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Common labels. Usage: include "atelier.labels" (list . "serving") */}}
{{- define "atelier.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "atelier.chart" $root }}
{{ include "atelier.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: atelier
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
An image reference: repository:tag, the tag defaulting to the chart's appVersion, with
@digest appended when a digest is given (the digest then decides what runs).
Usage: include "atelier.image" (list . .Values.serving.image)
*/}}
{{- define "atelier.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $tag := default $root.Chart.AppVersion $image.tag | toString -}}
{{- if eq $tag "latest" -}}
{{- fail (printf "%s: the tag \"latest\" is not allowed; pin a version or a digest" $image.repository) -}}
{{- end -}}
{{- if $image.digest -}}
{{- printf "%s:%s@%s" $image.repository $tag $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* imagePullSecrets block for a pod spec. */}}
{{- define "atelier.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod security context. Usage: include "atelier.podSecurityContext" 10001 */}}
{{- define "atelier.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container security context: non-root, read-only root, no privilege, no capability. */}}
{{- define "atelier.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* ServiceAccount names, one per component. */}}
{{- define "atelier.serviceAccountName" -}}
{{- include "atelier.componentName" . -}}
{{- end -}}

{{/* The model store claim. */}}
{{- define "atelier.storeClaim" -}}
{{- if .Values.modelStore.pvc.create -}}
{{- include "atelier.componentName" (list . "model-store") -}}
{{- else -}}
{{- required "modelStore.pvc.existingClaim: name a claim, or set modelStore.pvc.create=true" .Values.modelStore.pvc.existingClaim -}}
{{- end -}}
{{- end -}}

{{/* The object store root without its scheme, as an rclone remote path: store:<bucket>/<prefix>. */}}
{{- define "atelier.rcloneRoot" -}}
{{- printf "store:%s" (trimPrefix "s3://" .Values.modelStore.objectStore.uri | trimSuffix "/") -}}
{{- end -}}

{{/* True ("true") when a pinned version is served. */}}
{{- define "atelier.pinned" -}}
{{- if ne (toString .Values.serving.modelVersion) "current" -}}true{{- end -}}
{{- end -}}

{{/* The served version's path under the store root: "" (current) or versions/<v>. */}}
{{- define "atelier.versionPath" -}}
{{- if include "atelier.pinned" . -}}
{{- printf "versions/%s" (toString .Values.serving.modelVersion) -}}
{{- end -}}
{{- end -}}

{{/*
The InferenceService storageUri: the served version's folder, a complete KServe TorchServe
storage layout (config/config.properties + model-store/<name>.mar).
*/}}
{{- define "atelier.storageUri" -}}
{{- if eq .Values.modelStore.type "pvc" -}}
{{- $path := include "atelier.versionPath" . -}}
{{- if $path -}}
{{- printf "pvc://%s/%s" (include "atelier.storeClaim" .) $path -}}
{{- else -}}
{{- printf "pvc://%s" (include "atelier.storeClaim" .) -}}
{{- end -}}
{{- else -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.modelStore.objectStore.uri) (include "atelier.versionPath" .) -}}
{{- end -}}
{{- end -}}

{{/* The InferenceService name: short enough for KServe's and Knative's derived names. */}}
{{- define "atelier.isvcName" -}}
{{- default (include "atelier.fullname" .) .Values.serving.kserve.name | trunc 33 | trimSuffix "-" -}}
{{- end -}}

{{/* Knative (Serverless) deployment mode? */}}
{{- define "atelier.knative" -}}
{{- if has .Values.serving.kserve.deploymentMode (list "Knative" "Serverless") -}}true{{- end -}}
{{- end -}}

{{/* The Service (name and port) that answers inference requests, for Ingress, NOTES and tests. */}}
{{- define "atelier.inferenceService" -}}
{{- if eq .Values.serving.mode "kserve" -}}
{{- printf "%s-predictor" (include "atelier.isvcName" .) -}}
{{- else -}}
{{- include "atelier.componentName" (list . "serving") -}}
{{- end -}}
{{- end -}}

{{- define "atelier.inferenceServicePort" -}}
{{- if eq .Values.serving.mode "kserve" -}}80{{- else -}}{{ .Values.serving.ports.inference }}{{- end -}}
{{- end -}}

{{/* rclone env: the "store" remote from the object store settings, credentials from a Secret. */}}
{{- define "atelier.rcloneEnv" -}}
- name: RCLONE_CONFIG_STORE_TYPE
  value: s3
- name: RCLONE_CONFIG_STORE_PROVIDER
  value: {{ if .Values.modelStore.objectStore.endpoint }}Other{{ else }}AWS{{ end }}
- name: RCLONE_CONFIG_STORE_ENV_AUTH
  value: "true"
{{- with .Values.modelStore.objectStore.endpoint }}
- name: RCLONE_CONFIG_STORE_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.modelStore.objectStore.region }}
- name: RCLONE_CONFIG_STORE_REGION
  value: {{ . | quote }}
{{- end }}
- name: RCLONE_CONFIG
  value: /tmp/rclone.conf
- name: RCLONE_CACHE_DIR
  value: /tmp/rclone-cache
- name: HOME
  value: /tmp
{{- end -}}

{{- define "atelier.rcloneEnvFrom" -}}
{{- with .Values.modelStore.objectStore.credentialsSecret }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end -}}

{{/*
The model-ready check: the management API (127.0.0.1 only) lists a READY worker of the model.
TorchServe 0.12 answers /ping with Healthy before the model is loaded, and it serves no KServe
readiness route (/v1/models/<name>, /v2/models/<name>/ready answer 404) without an envelope.
*/}}
{{- define "atelier.modelReadyCommand" -}}
- python3
- -c
- >-
  import json, sys, urllib.request;
  d = json.load(urllib.request.urlopen("http://127.0.0.1:{{ .Values.serving.ports.management }}/models/{{ .Values.model.name }}", timeout=4));
  sys.exit(0 if any(w.get("status") == "READY" for m in d for w in m.get("workers", [])) else 1)
{{- end -}}

{{/* The TorchServe container's command (the same in the ServingRuntime and in raw mode). */}}
{{- define "atelier.torchserveCommand" -}}
- tini
- -g
- --
- torchserve
- --start
- --foreground
- --ncs
- --disable-token-auth
- --model-store
- /mnt/models/model-store
- --ts-config
- /mnt/models/config/config.properties
{{- end -}}

{{/* The TorchServe container's environment: addresses, writable dirs, the feature spool. */}}
{{- define "atelier.torchserveEnv" -}}
- name: TS_INFERENCE_ADDRESS
  value: http://0.0.0.0:{{ .Values.serving.ports.inference }}
- name: TS_MANAGEMENT_ADDRESS
  value: http://127.0.0.1:{{ .Values.serving.ports.management }}
- name: TS_METRICS_ADDRESS
  value: http://0.0.0.0:{{ .Values.serving.ports.metrics }}
- name: TS_GRPC_INFERENCE_ADDRESS
  value: 127.0.0.1
- name: TS_GRPC_MANAGEMENT_ADDRESS
  value: 127.0.0.1
- name: TEMP
  value: /tmp
- name: TMPDIR
  value: /tmp
- name: HOME
  value: /tmp
- name: LOG_LOCATION
  value: /tmp/logs
- name: METRICS_LOCATION
  value: /tmp/logs
- name: JAVA_TOOL_OPTIONS
  value: -Djava.io.tmpdir=/tmp
- name: OMP_NUM_THREADS
  value: {{ .Values.serving.ompNumThreads | quote }}
- name: PYTHONPATH
  value: ""
{{- if .Values.drift.enabled }}
- name: ATELIER_SPOOL_DIR
  value: /var/run/atelier/spool
- name: ATELIER_SPOOL_MAX_BYTES
  value: {{ .Values.serving.spool.maxBytes | int64 | quote }}
- name: ATELIER_SPOOL_BACKUPS
  value: {{ .Values.serving.spool.backups | quote }}
{{- end }}
{{- end -}}

{{/* TorchServe's ports. */}}
{{- define "atelier.torchservePorts" -}}
- name: {{ if include "atelier.knative" . }}http1{{ else }}http{{ end }}
  containerPort: {{ .Values.serving.ports.inference }}
  protocol: TCP
{{- if not (include "atelier.knative" .) }}
- name: metrics
  containerPort: {{ .Values.serving.ports.metrics }}
  protocol: TCP
{{- end }}
{{- end -}}

{{/* TorchServe's probes: startup and readiness = model ready; liveness = /ping. */}}
{{- define "atelier.torchserveProbes" -}}
{{- $p := .Values.serving.probes -}}
startupProbe:
  exec:
    command:
      {{- include "atelier.modelReadyCommand" . | nindent 6 }}
  periodSeconds: {{ $p.startup.periodSeconds }}
  timeoutSeconds: {{ $p.startup.timeoutSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
readinessProbe:
  exec:
    command:
      {{- include "atelier.modelReadyCommand" . | nindent 6 }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
livenessProbe:
  httpGet:
    path: /ping
    port: {{ .Values.serving.ports.inference }}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
{{- end -}}

{{/* TorchServe's mounts (the model itself is mounted by KServe, or by the raw Deployment). */}}
{{- define "atelier.torchserveMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.drift.enabled }}
- name: spool
  mountPath: /var/run/atelier/spool
{{- end }}
{{- end -}}

{{/*
The drift sidecar. It reads the spool TorchServe writes (shared emptyDir), the store root
read-only (CURRENT.json and versions/<v>/model-store/<name>.mar hold the reference profile),
and writes its state and reports into an emptyDir. Readiness is /healthz, not /readyz: a
sidecar without a reference yet (no version published, or no traffic from the pinned one)
must not hold the whole pod out of the Service.
*/}}
{{- define "atelier.driftContainer" -}}
- name: drift
  image: {{ include "atelier.image" (list . .Values.drift.image) }}
  imagePullPolicy: {{ .Values.drift.image.pullPolicy }}
  {{- if not (include "atelier.knative" .) }}
  ports:
    - name: drift
      containerPort: {{ .Values.drift.port }}
      protocol: TCP
  {{- end }}
  env:
    - name: ATELIER_DRIFT_HOST
      value: 0.0.0.0
    - name: ATELIER_DRIFT_PORT
      value: {{ .Values.drift.port | quote }}
    - name: ATELIER_DRIFT_SPOOL_DIR
      value: /var/run/atelier/spool
    - name: ATELIER_DRIFT_STORE
      value: /mnt/store
    - name: ATELIER_DRIFT_STATE_DIR
      value: /var/lib/atelier/drift/state
    - name: ATELIER_DRIFT_REPORTS_DIR
      value: /var/lib/atelier/drift/reports
    - name: HOME
      value: /tmp
    - name: MPLCONFIGDIR
      value: /tmp/matplotlib
    {{- range $key, $value := .Values.drift.settings }}
    - name: {{ printf "ATELIER_DRIFT_%s" (upper $key) }}
      value: {{ $value | toString | quote }}
    {{- end }}
  {{- /* Knative probes sidecars only with its multi-container-probing feature: none there. */}}
  {{- if not (include "atelier.knative" .) }}
  readinessProbe:
    httpGet:
      path: /healthz
      port: {{ .Values.drift.port }}
    periodSeconds: 10
    timeoutSeconds: 3
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ .Values.drift.port }}
    initialDelaySeconds: 10
    periodSeconds: 20
    timeoutSeconds: 5
    failureThreshold: 6
  {{- end }}
  resources:
    {{- toYaml .Values.drift.resources | nindent 4 }}
  securityContext:
    {{- include "atelier.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: spool
      mountPath: /var/run/atelier/spool
    - name: store
      mountPath: /mnt/store
      readOnly: true
    - name: drift-data
      mountPath: /var/lib/atelier/drift
    - name: drift-tmp
      mountPath: /tmp
{{- end -}}

{{/* Volumes of a serving pod except the model itself. */}}
{{- define "atelier.servingVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.serving.tmpSizeLimit }}
{{- if .Values.drift.enabled }}
- name: spool
  emptyDir:
    sizeLimit: {{ .Values.serving.spool.sizeLimit }}
- name: drift-data
  emptyDir:
    sizeLimit: {{ .Values.drift.dataSizeLimit }}
- name: drift-tmp
  emptyDir:
    sizeLimit: 256Mi
{{- if eq .Values.modelStore.type "objectStore" }}
- name: store
  emptyDir:
    sizeLimit: 1Gi
{{- end }}
{{- end }}
{{- /* The claim, once per pod: raw mode's TorchServe and the drift sidecar mount the same volume. */}}
{{- if and (eq .Values.modelStore.type "pvc") (or .Values.drift.enabled (eq .Values.serving.mode "raw")) }}
- name: store
  persistentVolumeClaim:
    claimName: {{ include "atelier.storeClaim" . }}
    readOnly: true
{{- end }}
{{- end -}}

{{/*
Object store mode: an init container that copies the store's CURRENT.json and the served
version's archive into the drift sidecar's store folder (the layout load_reference reads).
*/}}
{{- define "atelier.fetchReferenceInitContainer" -}}
- name: fetch-reference
  image: {{ include "atelier.image" (list . .Values.modelStore.objectStore.image) }}
  imagePullPolicy: {{ .Values.modelStore.objectStore.image.pullPolicy }}
  args:
    - copy
    - {{ include "atelier.rcloneRoot" . }}
    - /mnt/store
    - --include
    - CURRENT.json
    - --include
    - {{ printf "versions/%s/model-store/**" (toString .Values.serving.modelVersion) }}
  env:
    {{- include "atelier.rcloneEnv" . | nindent 4 }}
  {{- include "atelier.rcloneEnvFrom" . | nindent 2 }}
  resources:
    requests:
      cpu: 50m
      memory: 64Mi
    limits:
      cpu: 500m
      memory: 256Mi
  securityContext:
    {{- include "atelier.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: store
      mountPath: /mnt/store
    - name: drift-tmp
      mountPath: /tmp
{{- end -}}

{{/* Validate combinations the schema cannot express; fail with a message naming the key. */}}
{{- define "atelier.validate" -}}
{{- if and (eq .Values.modelStore.type "objectStore") (not .Values.modelStore.objectStore.uri) -}}
{{- fail "modelStore.objectStore.uri: required when modelStore.type is objectStore (s3://<bucket>/<prefix>)" -}}
{{- end -}}
{{- if and (eq .Values.modelStore.type "objectStore") (not (include "atelier.pinned" .)) -}}
{{- fail "serving.modelVersion: set a published version (e.g. \"3\") when modelStore.type is objectStore; \"current\" needs a live volume" -}}
{{- end -}}
{{- if and (ne .Values.serving.kserve.canaryTrafficPercent nil) (not (include "atelier.pinned" .)) (eq .Values.serving.mode "kserve") -}}
{{- fail "serving.kserve.canaryTrafficPercent: needs a pinned serving.modelVersion (a canary splits traffic between two storageUris)" -}}
{{- end -}}
{{- if and .Values.training.imageFolder.enabled (not .Values.training.imageFolder.claimName) -}}
{{- fail "training.imageFolder.claimName: required when training.imageFolder.enabled is true" -}}
{{- end -}}
{{- if and (eq .Values.monitoring.mode "bundled") (eq .Values.serving.mode "kserve") (include "atelier.knative" .) -}}
{{- fail "monitoring.mode: bundled scrapes declared container ports, which Knative pods cannot have beyond one; use monitoring.mode=operator with serving.kserve.deploymentMode Knative" -}}
{{- end -}}
{{- if lt (int .Values.serving.autoscaling.maxReplicas) (int .Values.serving.autoscaling.minReplicas) -}}
{{- fail "serving.autoscaling.maxReplicas: must be at least serving.autoscaling.minReplicas" -}}
{{- end -}}
{{- end -}}
