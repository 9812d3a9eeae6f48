{{/*
The serving pod's fragments, shared by the KServe objects (kserve.yaml) and raw mode
(raw.yaml): the serving container (the OIP front and TorchServe behind it: command,
environment, ports, probes, mounts), the drift
sidecar, the pod's volumes and the object-store init container, and the decisions they rest
on (which version is served, where from, Knative or not).
*/}}

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

{{/* Knative (Serverless) deployment mode? */}}
{{- define "atelier.knative" -}}
{{- if has .Values.serving.kserve.deploymentMode (list "Knative" "Serverless") -}}true{{- end -}}
{{- end -}}

{{/* TorchServe's own inference port, on 127.0.0.1 behind the OIP front (the image's default). */}}
{{- define "atelier.torchserveInferencePort" -}}8085{{- end -}}

{{/*
The serving container's command (the same in the ServingRuntime and in raw mode): tini as
PID 1, then the OIP front (atelier.serving.oip_front) on the inference port. The front answers
the Open Inference Protocol's health and metadata routes (TorchServe 0.12 serves none of them),
forwards every other request to TorchServe on 127.0.0.1, and launches and supervises
TorchServe: if either exits, the container exits non-zero. tini forwards SIGTERM to the front
alone (no -g), which stops listening, lets the requests in flight finish, then stops
TorchServe and its workers. TorchServe runs at niceness 5, so the front (a few percent of the
CPU) is not queued behind busy workers. TorchServe's addresses come from its TS_* env vars
below.
*/}}
{{- define "atelier.torchserveCommand" -}}
- tini
- --
- python
- -m
- atelier.serving.oip_front
- --host
- 0.0.0.0
- --port
- {{ .Values.serving.ports.inference | quote }}
- --store
- /mnt/models
- --model-name
- {{ .Values.model.name }}
- --launch
- --
- nice
- -n
- "5"
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

{{/*
The serving container's environment: TorchServe's addresses (inference and management on
127.0.0.1, read by the front too; metrics on all addresses), writable dirs, the feature spool.
*/}}
{{- define "atelier.torchserveEnv" -}}
- name: TS_INFERENCE_ADDRESS
  value: http://127.0.0.1:{{ include "atelier.torchserveInferencePort" . }}
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
{{- with .Values.serving.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The serving container's ports: the OIP front's (inference) and TorchServe's metrics. */}}
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

{{/*
The serving container's probes, on the OIP front: startup and readiness = the model's ready
route (TorchServe's management API lists a READY worker of the served version; TorchServe's
/ping says Healthy before the model is loaded); liveness = /v2/health/live (the front answers;
it exits when TorchServe does).
*/}}
{{- define "atelier.torchserveProbes" -}}
{{- $p := .Values.serving.probes -}}
{{- $ready := printf "/v2/models/%s/ready" .Values.model.name -}}
startupProbe:
  httpGet:
    path: {{ $ready }}
    port: {{ .Values.serving.ports.inference }}
  periodSeconds: {{ $p.startup.periodSeconds }}
  timeoutSeconds: {{ $p.startup.timeoutSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
readinessProbe:
  httpGet:
    path: {{ $ready }}
    port: {{ .Values.serving.ports.inference }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
livenessProbe:
  httpGet:
    path: /v2/health/live
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
{{- with .Values.serving.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The drift sidecar. It reads the spool TorchServe writes (shared emptyDir), the store root
read-only (CURRENT.json and versions/<v>/model-store/<name>.mar hold the reference profile),
ships the records into the shared inference log (drift.store, atelier.driftStoreEnv; its pod
name tells the records and the reporter election apart) and writes its state and reports into
an emptyDir. Readiness is /healthz, not /readyz: a
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
    - name: ATELIER_DRIFT_POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    {{- include "atelier.driftStoreEnv" . | nindent 4 }}
    - name: HOME
      value: /tmp
    - name: MPLCONFIGDIR
      value: /tmp/matplotlib
    {{- range $key, $value := .Values.drift.settings }}
    - name: {{ printf "ATELIER_DRIFT_%s" (upper $key) }}
      value: {{ $value | toString | quote }}
    {{- end }}
    {{- with .Values.drift.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- /* Knative probes sidecars only with its multi-container-probing feature: none there. */}}
  {{- if not (include "atelier.knative" .) }}
  {{- $timing := list "initialDelaySeconds" "periodSeconds" "timeoutSeconds" "successThreshold" "failureThreshold" }}
  readinessProbe:
    httpGet:
      path: /healthz
      port: {{ .Values.drift.port }}
    {{- include "atelier.toYamlOrdered" (list .Values.drift.probes.readiness $timing) | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ .Values.drift.port }}
    {{- include "atelier.toYamlOrdered" (list .Values.drift.probes.liveness $timing) | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml .Values.drift.resources | nindent 4 }}
  securityContext:
    {{- include "atelier.containerSecurityContext" .Values.drift.securityContext | nindent 4 }}
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
    {{- with .Values.drift.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/*
The drift sidecar's database (drift.store): ATELIER_DRIFT_DATABASE_URL, and
ATELIER_DRIFT_DATABASE_PASSWORD from a Secret when the URL carries none. sqlite: a file in the
state folder (the drift-data emptyDir, so one pod's log, lost with the pod); postgresql: the
bundled Service in the release namespace (short name, as k8s/ may be applied elsewhere),
password from the chart's Secret; external: the URL (and password) from the user's Secret.
*/}}
{{- define "atelier.driftStoreEnv" -}}
{{- $store := .Values.drift.store -}}
{{- if eq $store.type "sqlite" -}}
- name: ATELIER_DRIFT_DATABASE_URL
  value: sqlite:////var/lib/atelier/drift/state/inference-log.db
{{- else if eq $store.type "postgresql" -}}
{{- $pg := $store.postgresql -}}
{{- $name := include "atelier.postgresqlName" . -}}
- name: ATELIER_DRIFT_DATABASE_URL
  value: {{ printf "postgresql+psycopg://%s@%s:5432/%s" $pg.username $name $pg.database }}
- name: ATELIER_DRIFT_DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: password
{{- else -}}
{{- $ext := $store.external -}}
- name: ATELIER_DRIFT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $ext.existingSecret }}
      key: {{ $ext.urlKey }}
{{- with $ext.passwordKey }}
- name: ATELIER_DRIFT_DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $ext.existingSecret }}
      key: {{ . }}
{{- end }}
{{- end -}}
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
    sizeLimit: {{ .Values.drift.tmpSizeLimit }}
{{- if eq .Values.modelStore.type "objectStore" }}
- name: store
  emptyDir:
    sizeLimit: {{ .Values.drift.storeSizeLimit }}
{{- end }}
{{- end }}
{{- /* The claim, once per pod: raw mode's TorchServe and the drift sidecar mount the same volume. */}}
{{- if and (eq .Values.modelStore.type "pvc") (or .Values.drift.enabled (eq .Values.serving.mode "raw")) }}
- name: store
  persistentVolumeClaim:
    claimName: {{ include "atelier.storeClaim" . }}
    readOnly: true
{{- end }}
{{- with .Values.serving.extraVolumes }}
{{ toYaml . }}
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
    {{- include "atelier.resources" .Values.modelStore.objectStore.resources | nindent 4 }}
  securityContext:
    {{- include "atelier.containerSecurityContext" .Values.drift.securityContext | nindent 4 }}
  volumeMounts:
    - name: store
      mountPath: /mnt/store
    - name: drift-tmp
      mountPath: /tmp
{{- end -}}

{{/*
The KEDA triggers' query: monitoring/prometheus/queries/autoscaling.yml (inference_rate, or
inference_rate_kserve for the KServe runtime) with $namespace and $model filled in. Raw mode's
ScaledObject and KServe's External metric use it.
*/}}
{{- define "atelier.kedaQuery" -}}
{{- $doc := .Files.Get "files/prometheus/queries/autoscaling.yml" | fromYaml -}}
{{- $key := ternary "inference_rate_kserve" "inference_rate" (eq .Values.serving.runtime "kserve") -}}
{{- $q := dig "queries" $key "" $doc -}}
{{- if not $q -}}
{{- fail (printf "files/prometheus/queries/autoscaling.yml: no queries.%s (run atelier chart sync)" $key) -}}
{{- end -}}
{{- $q | replace "$namespace" .Release.Namespace | replace "$model" .Values.model.name -}}
{{- end -}}
