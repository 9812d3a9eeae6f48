{{/*
The model server, serving.runtime: torchserve (TorchServe with atelier's handler; its container
pieces are the atelier.torchserve* helpers in _serving.tpl) or kserve (atelier's KServe runtime,
`python -m atelier.serving.kserve_runtime` on KServe's own Python ModelServer; the
atelier.kserveRuntime* helpers below). The atelier.serving* helpers pick one of the two, so that
kserve.yaml, raw.yaml, the monitoring templates and the NetworkPolicy follow the runtime without
naming it. Both runtimes load the same .mar from /mnt/models, answer raw PNG, KServe v1 and v2
on the inference port, export the same atelier_* metrics and write the same feature spool.
*/}}

{{/* True ("true") when the KServe runtime serves. */}}
{{- define "atelier.kserveRuntime" -}}
{{- if eq .Values.serving.runtime "kserve" -}}true{{- end -}}
{{- end -}}

{{/* The runtime's name: torchserve or kserve. */}}
{{- define "atelier.runtimeName" -}}
{{- if include "atelier.kserveRuntime" . -}}kserve{{- else -}}torchserve{{- end -}}
{{- end -}}

{{/*
The model server's scrape job (monitoring/README.md, "Label contract"): atelier-torchserve
(TorchServe's metrics port) or atelier-kserve (the KServe runtime's inference port).
*/}}
{{- define "atelier.servingJob" -}}
{{- printf "atelier-%s" (include "atelier.runtimeName" .) -}}
{{- end -}}

{{/* The ServingRuntime (and monitor) name: <fullname>-torchserve or <fullname>-kserve. */}}
{{- define "atelier.servingRuntimeName" -}}
{{- include "atelier.componentName" (list . (include "atelier.runtimeName" .)) -}}
{{- end -}}

{{/* The ServingRuntime's model format: serving.kserve.modelFormat, or atelier-<runtime>. */}}
{{- define "atelier.modelFormat" -}}
{{- default (printf "atelier-%s" (include "atelier.runtimeName" .)) .Values.serving.kserve.modelFormat -}}
{{- end -}}

{{/* The model server's image values (serving.image or serving.kserveRuntime.image) as YAML. */}}
{{- define "atelier.servingImageValues" -}}
{{- if include "atelier.kserveRuntime" . -}}
{{- toYaml .Values.serving.kserveRuntime.image -}}
{{- else -}}
{{- toYaml .Values.serving.image -}}
{{- end -}}
{{- end -}}

{{/* The model server's image reference. */}}
{{- define "atelier.servingImage" -}}
{{- include "atelier.image" (list . (include "atelier.servingImageValues" . | fromYaml)) -}}
{{- end -}}

{{/* The model server's image pull policy. */}}
{{- define "atelier.servingImagePullPolicy" -}}
{{- (include "atelier.servingImageValues" . | fromYaml).pullPolicy -}}
{{- end -}}

{{/* The model server's resources: serving.resources, or serving.kserveRuntime.resources when set. */}}
{{- define "atelier.servingResources" -}}
{{- if and (include "atelier.kserveRuntime" .) .Values.serving.kserveRuntime.resources -}}
{{- toYaml .Values.serving.kserveRuntime.resources -}}
{{- else -}}
{{- toYaml .Values.serving.resources -}}
{{- end -}}
{{- end -}}

{{/*
The container port Prometheus scrapes, its name and number: TorchServe's metrics port, or the
KServe runtime's inference port (its /metrics is there). Knative pods declare one port only:
their metrics go through KServe's aggregation (queue-proxy port aggr-metric, 9088).
*/}}
{{- define "atelier.metricsPortName" -}}
{{- if include "atelier.knative" . -}}aggr-metric{{- else if include "atelier.kserveRuntime" . -}}http{{- else -}}metrics{{- end -}}
{{- end -}}

{{- define "atelier.metricsPort" -}}
{{- if include "atelier.knative" . -}}9088{{- else -}}{{ include "atelier.appMetricsPort" . }}{{- end -}}
{{- end -}}

{{/* The port the model server itself serves /metrics on (KServe's prometheus.kserve.io/port). */}}
{{- define "atelier.appMetricsPort" -}}
{{- if include "atelier.kserveRuntime" . -}}{{ .Values.serving.ports.inference }}{{- else -}}{{ .Values.serving.ports.metrics }}{{- end -}}
{{- end -}}

{{/*
The raw-mode HPA's Pods metric (serving.autoscaling.raw.hpa.metricName, or the runtime's request
rate as the Prometheus adapter's default rule names it: <counter without _total>_per_second).
*/}}
{{- define "atelier.hpaMetricName" -}}
{{- $default := ternary "atelier_requests_per_second" "ts_inference_requests_per_second" (eq .Values.serving.runtime "kserve") -}}
{{- default $default .Values.serving.autoscaling.raw.hpa.metricName -}}
{{- end -}}

{{/* --- The model server's container pieces, for the runtime chosen. */}}

{{- define "atelier.servingCommand" -}}
{{- if include "atelier.kserveRuntime" . -}}
{{- include "atelier.kserveRuntimeCommand" . -}}
{{- else -}}
{{- include "atelier.torchserveCommand" . -}}
{{- end -}}
{{- end -}}

{{- define "atelier.servingEnv" -}}
{{- if include "atelier.kserveRuntime" . -}}
{{- include "atelier.kserveRuntimeEnv" . -}}
{{- else -}}
{{- include "atelier.torchserveEnv" . -}}
{{- end -}}
{{- end -}}

{{- define "atelier.servingPorts" -}}
{{- if include "atelier.kserveRuntime" . -}}
{{- include "atelier.kserveRuntimePorts" . -}}
{{- else -}}
{{- include "atelier.torchservePorts" . -}}
{{- end -}}
{{- end -}}

{{- define "atelier.servingProbes" -}}
{{- if include "atelier.kserveRuntime" . -}}
{{- include "atelier.kserveRuntimeProbes" . -}}
{{- else -}}
{{- include "atelier.torchserveProbes" . -}}
{{- end -}}
{{- end -}}

{{/* --- The KServe runtime. */}}

{{/*
Its command (the same in the ServingRuntime and in raw mode): tini as PID 1 (-g: signals reach
every worker process), then the image's entrypoint with the store KServe mounts, the model, the
address and port, and the worker processes.
*/}}
{{- define "atelier.kserveRuntimeCommand" -}}
- tini
- -g
- --
- python
- -m
- atelier.serving.kserve_runtime
- --store
- /mnt/models
- --model-name
- {{ .Values.model.name }}
- --host
- 0.0.0.0
- --port
- {{ .Values.serving.ports.inference | quote }}
- --workers
- {{ .Values.serving.kserveRuntime.workers | quote }}
{{- end -}}

{{/*
Its environment: writable folders under /tmp (the .mar is unzipped under TMPDIR), threads, and
the feature spool (the same ATELIER_SPOOL_* settings TorchServe's handler reads).
*/}}
{{- define "atelier.kserveRuntimeEnv" -}}
- name: TMPDIR
  value: /tmp
- name: HOME
  value: /tmp
- name: OMP_NUM_THREADS
  value: {{ .Values.serving.ompNumThreads | quote }}
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

{{/* Its one port: inference (raw PNG, v1, v2), health and /metrics. */}}
{{- define "atelier.kserveRuntimePorts" -}}
- name: {{ if include "atelier.knative" . }}http1{{ else }}http{{ end }}
  containerPort: {{ .Values.serving.ports.inference }}
  protocol: TCP
{{- end -}}

{{/*
Its probes: startup and readiness = the model's ready state (KServe's GET /v2/models/<name>/ready:
200 once the model has loaded, 503 before; the server listens only after the load); liveness =
GET /v2/health/live.
*/}}
{{- define "atelier.kserveRuntimeProbes" -}}
{{- $p := .Values.serving.probes -}}
{{- $port := .Values.serving.ports.inference -}}
{{- $ready := printf "/v2/models/%s/ready" .Values.model.name -}}
startupProbe:
  httpGet:
    path: {{ $ready }}
    port: {{ $port }}
  periodSeconds: {{ $p.startup.periodSeconds }}
  timeoutSeconds: {{ $p.startup.timeoutSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
readinessProbe:
  httpGet:
    path: {{ $ready }}
    port: {{ $port }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
livenessProbe:
  httpGet:
    path: /v2/health/live
    port: {{ $port }}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
{{- end -}}
