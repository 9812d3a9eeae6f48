{{/*
The SLO rule file, rendered from values: monitoring/prometheus/rules/slo.yml with each
objective's expr replaced by vector(<value>). The defaults equal the file (a chart test checks).
*/}}
{{- define "atelier.sloRules" -}}
{{- $slo := .Files.Get "files/prometheus/rules/slo.yml" | fromYaml -}}
{{- $objectives := dict
      "atelier:slo_availability:objective" .Values.monitoring.slo.availability
      "atelier:slo_latency_p99:objective_seconds" .Values.monitoring.slo.latencyP99Seconds -}}
{{- $groups := list -}}
{{- range $slo.groups -}}
{{- $rules := list -}}
{{- range .rules -}}
{{- $rule := deepCopy . -}}
{{- if hasKey $objectives (toString .record) -}}
{{- $_ := set $rule "expr" (printf "vector(%v)" (get $objectives (toString .record))) -}}
{{- end -}}
{{- $rules = append $rules $rule -}}
{{- end -}}
{{- $group := deepCopy . -}}
{{- $_ := set $group "rules" $rules -}}
{{- $groups = append $groups $group -}}
{{- end -}}
{{- toYaml (dict "groups" $groups) -}}
{{- end -}}

{{/* Every rule group: the SLO group from values, then recording.yml and alerts.yml as they are. */}}
{{- define "atelier.ruleGroups" -}}
{{- $groups := (include "atelier.sloRules" . | fromYaml).groups -}}
{{- range list "recording.yml" "alerts.yml" -}}
{{- $groups = concat $groups ($.Files.Get (printf "files/prometheus/rules/%s" .) | fromYaml).groups -}}
{{- end -}}
{{- toYaml $groups -}}
{{- end -}}

{{/* Parse an Alertmanager matcher string (name="value", name=~"re", ...) into {name, value, matchType}. */}}
{{- define "atelier.amMatcher" -}}
{{- $re := "^\\s*([a-zA-Z_][a-zA-Z0-9_]*)\\s*(=~|!~|!=|=)\\s*\"?(.*?)\"?\\s*$" -}}
{{- if not (regexMatch $re .) -}}
{{- fail (printf "monitoring/alertmanager/alertmanager.yml: cannot translate matcher %q" .) -}}
{{- end -}}
name: {{ regexReplaceAll $re . "${1}" | quote }}
value: {{ regexReplaceAll $re . "${3}" | quote }}
matchType: {{ regexReplaceAll $re . "${2}" | quote }}
{{- end -}}

{{/* An Alertmanager route (snake_case, string matchers) as an AlertmanagerConfig route. */}}
{{- define "atelier.amRoute" -}}
{{- $keys := dict "receiver" "receiver" "group_by" "groupBy" "group_wait" "groupWait" "group_interval" "groupInterval" "repeat_interval" "repeatInterval" "continue" "continue" "mute_time_intervals" "muteTimeIntervals" "active_time_intervals" "activeTimeIntervals" -}}
{{- $out := dict -}}
{{- range $k, $v := . -}}
{{- if hasKey $keys $k -}}
{{- $_ := set $out (get $keys $k) $v -}}
{{- else if eq $k "matchers" -}}
{{- $ms := list -}}
{{- range $v -}}
{{- $ms = append $ms (include "atelier.amMatcher" . | fromYaml) -}}
{{- end -}}
{{- $_ := set $out "matchers" $ms -}}
{{- else if eq $k "routes" -}}
{{- $rs := list -}}
{{- range $v -}}
{{- $rs = append $rs (include "atelier.amRoute" . | fromYaml) -}}
{{- end -}}
{{- $_ := set $out "routes" $rs -}}
{{- else -}}
{{- fail (printf "monitoring/alertmanager/alertmanager.yml: route key %q has no AlertmanagerConfig translation" $k) -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The webhook of a receiver, from monitoring.alertmanager.receivers.<name>. */}}
{{- define "atelier.amReceiverValues" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- toYaml (get $root.Values.monitoring.alertmanager.receivers $name | default dict) -}}
{{- end -}}

{{/* Labels the kube-prometheus-stack selects monitors, rules and configs by. */}}
{{- define "atelier.operatorLabels" -}}
{{ include "atelier.labels" . }}
release: {{ (index . 0).Values.monitoring.operator.releaseLabel }}
{{- end -}}

{{/* Relabelings that give a target the label contract of monitoring/README.md. */}}
{{- define "atelier.contractRelabelings" -}}
{{- $root := index . 0 -}}
- action: replace
  targetLabel: job
  replacement: {{ index . 1 }}
- action: replace
  targetLabel: model
  replacement: {{ $root.Values.model.name }}
{{- end -}}

{{/* Bundled Prometheus: pod discovery in the release namespace, the monitoring label contract. */}}
{{- define "atelier.bundledPrometheusConfig" -}}
{{- $sel := printf "%s;%s;serving" (include "atelier.name" .) .Release.Name -}}
# Rendered by the atelier chart (monitoring.mode=bundled). Job names and target labels follow
# monitoring/README.md ("Label contract"); rules are monitoring/prometheus/rules/.
global:
  scrape_interval: {{ .Values.monitoring.scrapeInterval }}
  evaluation_interval: 15s
rule_files:
  - /etc/prometheus/rules/*.yml
alerting:
  alertmanagers:
    - static_configs:
        - targets:
            - {{ printf "%s:9093" (include "atelier.componentName" (list . "alertmanager")) }}
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets:
          - localhost:9090
  - job_name: alertmanager
    static_configs:
      - targets:
          - {{ printf "%s:9093" (include "atelier.componentName" (list . "alertmanager")) }}
{{- range $job, $port := dict (include "atelier.servingJob" .) (include "atelier.metricsPortName" .) "atelier-drift" "drift" }}
  - job_name: {{ $job }}
    kubernetes_sd_configs:
      - role: pod
        namespaces:
          names:
            - {{ $.Release.Namespace }}
    relabel_configs:
      - source_labels:
          - __meta_kubernetes_pod_label_app_kubernetes_io_name
          - __meta_kubernetes_pod_label_app_kubernetes_io_instance
          - __meta_kubernetes_pod_label_app_kubernetes_io_component
          - __meta_kubernetes_pod_container_port_name
        regex: {{ printf "%s;%s" $sel $port | quote }}
        action: keep
      - target_label: model
        replacement: {{ $.Values.model.name }}
      - source_labels:
          - __meta_kubernetes_namespace
        target_label: namespace
      - source_labels:
          - __meta_kubernetes_pod_name
        target_label: pod
{{- end }}
{{- end -}}

{{/* Bundled rule files: slo.yml from values, recording.yml and alerts.yml byte for byte. */}}
{{- define "atelier.bundledRules" -}}
slo.yml: |
  # Rendered by the atelier chart from monitoring.slo (monitoring/prometheus/rules/slo.yml).
  {{- include "atelier.sloRules" . | nindent 2 }}
recording.yml: {{ .Files.Get "files/prometheus/rules/recording.yml" | toJson }}
alerts.yml: {{ .Files.Get "files/prometheus/rules/alerts.yml" | toJson }}
{{- end -}}

{{/*
Bundled Alertmanager: monitoring/alertmanager/alertmanager.yml with each receiver's webhook URL
from values (no URL: the receiver drops its notifications).
*/}}
{{- define "atelier.bundledAlertmanagerConfig" -}}
{{- $am := .Files.Get "files/alertmanager/alertmanager.yml" | fromYaml -}}
{{- $receivers := list -}}
{{- range $am.receivers -}}
{{- $v := include "atelier.amReceiverValues" (list $ .name) | fromYaml -}}
{{- $r := dict "name" .name -}}
{{- if $v.url -}}
{{- $sendResolved := true -}}
{{- with .webhook_configs }}{{ $sendResolved = (index . 0).send_resolved }}{{ end -}}
{{- $_ := set $r "webhook_configs" (list (dict "url" $v.url "send_resolved" $sendResolved)) -}}
{{- end -}}
{{- $receivers = append $receivers $r -}}
{{- end -}}
{{- $_ := set $am "receivers" $receivers -}}
# Rendered by the atelier chart from monitoring/alertmanager/alertmanager.yml: only the
# receivers' webhook URLs differ (monitoring.alertmanager.receivers).
{{ toYaml $am }}
{{- end -}}

{{/* Quote matchType values: a bare "=" is YAML 1.1's value tag, which PyYAML and others reject. */}}
{{- define "atelier.quoteMatchTypes" -}}
{{- regexReplaceAll "(matchType:) (=~|!~|!=|=)(\\s|$)" . "${1} \"${2}\"${3}" -}}
{{- end -}}
