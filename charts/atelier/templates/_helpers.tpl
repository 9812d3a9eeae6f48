{{/*
General helpers of the atelier chart: names, labels, image references, ServiceAccounts,
pull secrets, security contexts, the model store and the checks on values. Pod-spec fragments
live beside them: _serving.tpl (TorchServe, the drift sidecar), _runtime.tpl (the choice of
model server, the KServe runtime), _training.tpl (the training Job), _monitoring.tpl (rules,
routes, the bundled stack). Every helper is prefixed with the
chart name.
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

{{/*
The imagePullSecrets block of a pod spec, on a new line at the given indent; nothing at all
when there are none. Every pod uses it.
Usage: {{- include "atelier.imagePullSecrets" (list . 6) }}
*/}}
{{- define "atelier.imagePullSecrets" -}}
{{- $root := index . 0 -}}
{{- $indent := index . 1 -}}
{{- with $root.Values.imagePullSecrets -}}
{{- $items := list -}}
{{- range . -}}
{{- $items = append $items (dict "name" .) -}}
{{- end -}}
{{- toYaml (dict "imagePullSecrets" $items) | nindent $indent -}}
{{- end -}}
{{- end -}}

{{/*
A map as YAML with the given keys first, in that order, and the others sorted after them:
values rendered from maps keep the key order of Kubernetes' documentation (and of k8s/).
Usage: include "atelier.toYamlOrdered" (list $map (list "requests" "limits"))
*/}}
{{- define "atelier.toYamlOrdered" -}}
{{- $m := index . 0 | default dict -}}
{{- $order := index . 1 -}}
{{- $parts := list -}}
{{- range $order -}}
{{- if hasKey $m . -}}
{{- $parts = append $parts (toYaml (dict . (get $m .))) -}}
{{- end -}}
{{- end -}}
{{- range $k := keys $m | sortAlpha -}}
{{- if not (has $k $order) -}}
{{- $parts = append $parts (toYaml (dict $k (get $m $k))) -}}
{{- end -}}
{{- end -}}
{{- join "\n" $parts -}}
{{- end -}}

{{/* A pod security context value. Usage: include "atelier.podSecurityContext" .Values.serving.podSecurityContext */}}
{{- define "atelier.podSecurityContext" -}}
{{- include "atelier.toYamlOrdered" (list . (list "runAsNonRoot" "runAsUser" "runAsGroup" "fsGroup" "seccompProfile")) -}}
{{- end -}}

{{/* A container security context value. Usage: include "atelier.containerSecurityContext" .Values.drift.securityContext */}}
{{- define "atelier.containerSecurityContext" -}}
{{- include "atelier.toYamlOrdered" (list . (list "runAsNonRoot" "allowPrivilegeEscalation" "readOnlyRootFilesystem" "privileged" "capabilities" "seccompProfile")) -}}
{{- end -}}

{{/* Container resources (requests before limits). Usage: include "atelier.resources" .Values.drift.resources */}}
{{- define "atelier.resources" -}}
{{- include "atelier.toYamlOrdered" (list . (list "requests" "limits")) -}}
{{- end -}}

{{/*
A component's ServiceAccount name. A component with a <component>.serviceAccount value
(training, serving) follows create/name: created, it is name or <fullname>-<component>; not
created, it is name or "default". Other components always get their own.
Usage: include "atelier.serviceAccountName" (list . "serving")
*/}}
{{- define "atelier.serviceAccountName" -}}
{{- $root := index . 0 -}}
{{- $values := get $root.Values (index . 1) -}}
{{- $sa := dict -}}
{{- if kindIs "map" $values -}}
{{- $sa = get $values "serviceAccount" | default dict -}}
{{- end -}}
{{- if or (not (hasKey $sa "create")) $sa.create -}}
{{- default (include "atelier.componentName" .) $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end -}}

{{/* The model store claim. */}}
{{- define "atelier.storeClaim" -}}
{{- if .Values.modelStore.pvc.create -}}
{{- include "atelier.componentName" (list . "model-store") -}}
{{- else -}}
{{- required "modelStore.pvc.existingClaim: name a claim, or set modelStore.pvc.create=true" .Values.modelStore.pvc.existingClaim -}}
{{- end -}}
{{- end -}}

{{/*
The bundled PostgreSQL's name (StatefulSet, Service, Secret, ServiceAccount, NetworkPolicy):
at most 52 characters, because the StatefulSet controller labels each pod with
controller-revision-hash=<name>-<10-character hash>, a label value of at most 63.
*/}}
{{- define "atelier.postgresqlName" -}}
{{- printf "%s-postgresql" (include "atelier.fullname" . | trunc 41 | trimSuffix "-") -}}
{{- end -}}

{{/*
The bundled PostgreSQL's password, base64-encoded as a Secret's data holds it: the value of
the existing Secret passed in (the `lookup` of it; an empty map when there is none, as with
`helm template`, `--dry-run` or a first install), or else 32 new random characters. The data
directory keeps the password it was initialised with, so the Secret must keep it too.
Usage: include "atelier.postgresqlPassword" (lookup "v1" "Secret" .Release.Namespace $name)
*/}}
{{- define "atelier.postgresqlPassword" -}}
{{- $current := dig "data" "password" "" (. | default dict) -}}
{{- if $current -}}
{{- $current -}}
{{- else -}}
{{- randAlphaNum 32 | b64enc -}}
{{- end -}}
{{- end -}}

{{/* The object store root without its scheme, as an rclone remote path: store:<bucket>/<prefix>. */}}
{{- define "atelier.rcloneRoot" -}}
{{- printf "store:%s" (trimPrefix "s3://" .Values.modelStore.objectStore.uri | trimSuffix "/") -}}
{{- end -}}

{{/* The InferenceService name: short enough for KServe's and Knative's derived names. */}}
{{- define "atelier.isvcName" -}}
{{- default (include "atelier.fullname" .) .Values.serving.kserve.name | trunc 33 | trimSuffix "-" -}}
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
{{- if .Values.drift.enabled -}}
{{- include "atelier.validateDriftStore" . -}}
{{- end -}}
{{- include "atelier.validateTracking" . -}}
{{- end -}}

{{/*
The drift store's checks. SQLite is a file inside one pod, so it needs exactly one serving pod
(raw mode's Deployment and KServe's predictor both run serving.replicas pods when autoscaling
is off, and between minReplicas and maxReplicas when it is on).
*/}}
{{- define "atelier.validateDriftStore" -}}
{{- $store := .Values.drift.store -}}
{{- $a := .Values.serving.autoscaling -}}
{{- if eq $store.type "sqlite" -}}
{{- $change := list -}}
{{- if $a.enabled -}}
{{- $change = append $change (printf "serving.autoscaling.enabled=false (it is true: %v to %v replicas, serving.autoscaling.minReplicas/maxReplicas)" $a.minReplicas $a.maxReplicas) -}}
{{- end -}}
{{- if ne (int .Values.serving.replicas) 1 -}}
{{- $change = append $change (printf "serving.replicas=1 (it is %v)" .Values.serving.replicas) -}}
{{- end -}}
{{- if $change -}}
{{- fail (printf "drift.store.type: sqlite keeps the inference log in a file inside one pod, so it needs exactly one serving replica: set %s; or use drift.store.type=postgresql (bundled) or external" (join " and " $change)) -}}
{{- end -}}
{{- end -}}
{{- if and (eq $store.type "external") (not $store.external.existingSecret) -}}
{{- fail "drift.store.external.existingSecret: required when drift.store.type is external (an existing Secret whose drift.store.external.urlKey holds the database URL)" -}}
{{- end -}}
{{- range $key, $_ := .Values.drift.settings -}}
{{- if has (upper $key) (list "DATABASE_URL" "DATABASE_PASSWORD" "POD_NAME") -}}
{{- fail (printf "drift.settings.%s: the chart sets ATELIER_DRIFT_%s itself (from drift.store, or the pod's name); remove it from drift.settings" $key (upper $key)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
