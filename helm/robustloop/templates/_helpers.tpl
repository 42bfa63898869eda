{{/* Names, labels and the values several templates share. */}}

{{- define "robustloop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-robustloop, or the release name alone when it already holds the chart name. */}}
{{- define "robustloop.fullname" -}}
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

{{- define "robustloop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "robustloop.labels" -}}
helm.sh/chart: {{ include "robustloop.chart" . }}
app.kubernetes.io/name: {{ include "robustloop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: robustloop
{{- end }}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "server"). */}}
{{- define "robustloop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "robustloop.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "robustloop.componentLabels" -}}
{{ include "robustloop.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of an object that Prometheus selects (PrometheusRule, ServiceMonitor, PodMonitor):
`release: <prometheusRelease>`, which kube-prometheus-stack's selectors require by default, under
the object's own labels (call with (dict "ctx" $ "labels" X)); an own `release: ""` drops it. */}}
{{- define "robustloop.prometheusLabels" -}}
{{- $labels := dict }}
{{- with .ctx.Values.prometheusRelease }}
{{- $_ := set $labels "release" . }}
{{- end }}
{{- $labels = mustMergeOverwrite $labels (deepCopy (default dict .labels)) }}
{{- if eq (toString (index $labels "release")) "" }}
{{- $_ := unset $labels "release" }}
{{- end }}
{{- with $labels }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{- define "robustloop.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The image of the workflow's steps: call with (dict "ctx" $ "image" X), X a step's
workflow.steps.<step>.image or nothing; each field falls back on its own to workflow.image's,
then to the server's (image.*), the tag at last to the chart's appVersion. Returns
{reference, pullPolicy} as YAML. */}}
{{- define "robustloop.stepImage" -}}
{{- $server := .ctx.Values.image }}
{{- $workflow := default dict .ctx.Values.workflow.image }}
{{- $step := default dict .image }}
{{- $repository := $step.repository | default $workflow.repository | default $server.repository }}
{{- $tag := $step.tag | default $workflow.tag | default $server.tag | default .ctx.Chart.AppVersion }}
{{- $pullPolicy := $step.pullPolicy | default $workflow.pullPolicy | default $server.pullPolicy }}
reference: {{ printf "%s:%s" $repository (toString $tag) | quote }}
pullPolicy: {{ $pullPolicy | quote }}
{{- end }}

{{- define "robustloop.receiverImage" -}}
{{- printf "%s:%s" .Values.receiverImage.repository (default .Chart.AppVersion .Values.receiverImage.tag) }}
{{- end }}

{{- define "robustloop.storeClaim" -}}
{{- default (printf "%s-store" (include "robustloop.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* "true" when the store's claim mounts on one node at a time (no ReadWriteMany): every pod
that mounts it must then run on the server's node. */}}
{{- define "robustloop.storeOnOneNode" -}}
{{- if not (has "ReadWriteMany" .Values.persistence.accessModes) }}true{{ end }}
{{- end }}

{{/* Refuse, at render time, store placements that can never schedule (one line each). */}}
{{- define "robustloop.checkStorePlacement" -}}
{{- $modes := .Values.persistence.accessModes }}
{{- $shown := printf "persistence.accessModes=[%s]" (join "," $modes) }}
{{- if has "ReadWriteOncePod" $modes }}
{{- fail (printf "%s: the server, the bootstrap Job and the workflow's steps mount the store together, which ReadWriteOncePod forbids; use ReadWriteOnce (every such pod on the server's node) or ReadWriteMany (a shared filesystem)" $shown) }}
{{- end }}
{{- if not (or (has "ReadWriteOnce" $modes) (has "ReadWriteMany" $modes)) }}
{{- fail (printf "%s: the workflow's steps write to the store; use ReadWriteOnce or ReadWriteMany" $shown) }}
{{- end }}
{{- if include "robustloop.storeOnOneNode" . }}
{{- if gt (int .Values.server.replicas) 1 }}
{{- fail (printf "server.replicas=%d with %s: the store mounts on one node only, so the replicas could not spread over nodes (on another node a replica cannot mount it); use server.replicas=1, or persistence.accessModes={ReadWriteMany} (a shared filesystem)" (int .Values.server.replicas) $shown) }}
{{- end }}
{{- if not .Values.persistence.colocated }}
{{- /* A node pool named for pods that must join the server's node: every value that does so. */}}
{{- $pools := list }}
{{- with .Values.workflow.nodeSelector }}
{{- $pools = append $pools "workflow.nodeSelector" }}
{{- end }}
{{- range $step, $values := (default dict .Values.workflow.steps) }}
{{- if (default dict $values).nodeSelector }}
{{- $pools = append $pools (printf "workflow.steps.%s.nodeSelector" $step) }}
{{- end }}
{{- end }}
{{- $gpu := default dict .Values.workflow.gpu }}
{{- if and $gpu.enabled $gpu.nodeSelector }}
{{- $pools = append $pools "workflow.gpu.nodeSelector" }}
{{- end }}
{{- if (default dict .Values.bootstrap).nodeSelector }}
{{- $pools = append $pools "bootstrap.nodeSelector" }}
{{- end }}
{{- if $pools }}
{{- fail (printf "%s with %s: the pods they place (workflow steps, the bootstrap Job) mount the store, so they must run on the server's node, which those nodes may not hold; use persistence.accessModes={ReadWriteMany} (a shared filesystem), or set persistence.colocated=true if the server runs on those nodes too (server.nodeSelector, server.tolerations)" (join ", " $pools) $shown) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* "true" when the user's config turns on the capture of labelled traffic (config
capture.enabled): the server then writes the captured set into the store's volume. */}}
{{- define "robustloop.captureEnabled" -}}
{{- if dig "capture" "enabled" false (default dict .Values.config) }}true{{ end }}
{{- end }}

{{/* Where the captured set lives (config capture.path, owned by the chart): beside the store on
the same claim, so the workflow's steps, which mount that claim, read what the server wrote. */}}
{{- define "robustloop.captureDir" -}}
{{- printf "%s/captured" (trimSuffix "/" .Values.persistence.mountPath) }}
{{- end }}

{{/* Refuse, at render time, capture settings that cannot work (one line each). */}}
{{- define "robustloop.checkCapture" -}}
{{- $alerts := .Files.Get "files/robustloop.alerts.yaml" | fromYaml }}
{{- $after := dig "canary_accuracy" "escalate_after" nil (default dict $alerts) }}
{{- if include "robustloop.captureEnabled" . }}
{{- if gt (int .Values.server.replicas) 1 }}
{{- fail (printf "config.capture.enabled with server.replicas=%d: an input is held in the memory of the replica that served it until its ground truth comes back, and one server writes the captured set; use server.replicas=1 with capture" (int .Values.server.replicas)) }}
{{- end }}
{{- else if $after }}
{{- fail (printf "files/robustloop.alerts.yaml sets alerts.canary_accuracy.escalate_after %v, whose remediation trains on captured traffic: set config.capture.enabled=true (or render the rules without escalate_after and run `make chart-sync`)" $after) }}
{{- end }}
{{- end }}

{{/* The podAffinity term that puts a pod on the node of the server's pods. */}}
{{- define "robustloop.storeAffinityTerm" -}}
labelSelector:
  matchLabels:
    {{- include "robustloop.selectorLabels" (dict "ctx" . "component" "server") | nindent 4 }}
topologyKey: kubernetes.io/hostname
{{- end }}

{{/* An affinity, call with (dict "ctx" $ "affinity" X), with the store's podAffinity term added
when the store mounts on one node; empty when there is nothing to say. */}}
{{- define "robustloop.storeAffinity" -}}
{{- $affinity := deepCopy (default dict .affinity) }}
{{- if include "robustloop.storeOnOneNode" .ctx }}
{{- $podAffinity := default dict $affinity.podAffinity }}
{{- $required := default list $podAffinity.requiredDuringSchedulingIgnoredDuringExecution }}
{{- $required = append $required (include "robustloop.storeAffinityTerm" .ctx | fromYaml) }}
{{- $_ := set $podAffinity "requiredDuringSchedulingIgnoredDuringExecution" $required }}
{{- $_ := set $affinity "podAffinity" $podAffinity }}
{{- end }}
{{- if $affinity }}
{{- toYaml $affinity }}
{{- end }}
{{- end }}

{{- define "robustloop.receiverClaim" -}}
{{- default (printf "%s-receiver" (include "robustloop.fullname" .)) .Values.receiver.persistence.existingClaim }}
{{- end }}

{{- define "robustloop.tokenSecret" -}}
{{- default (printf "%s-receiver-token" (include "robustloop.fullname" .)) .Values.receiver.token.existingSecret }}
{{- end }}

{{- define "robustloop.feedbackTokenSecret" -}}
{{- default (printf "%s-feedback-token" (include "robustloop.fullname" .)) .Values.server.feedbackToken.existingSecret }}
{{- end }}

{{- define "robustloop.feedbackSigningKeySecret" -}}
{{- default (printf "%s-signing-key" (include "robustloop.fullname" .)) .Values.server.feedbackSigningKey.existingSecret }}
{{- end }}

{{/* Where the receiver pod mounts its bearer token (config webhook.token_file, re-read when the
kubelet updates the Secret's files). */}}
{{- define "robustloop.receiverTokenDir" -}}/var/run/secrets/robustloop/webhook{{- end }}

{{/* Where the server pod mounts the feedback token (config serving.feedback_token_file). */}}
{{- define "robustloop.feedbackTokenDir" -}}/var/run/secrets/robustloop/feedback{{- end }}

{{- define "robustloop.feedbackTokenFile" -}}
{{- include "robustloop.feedbackTokenDir" . }}/token
{{- end }}

{{/* Where the server pods mount the key that signs sample ids (serving.feedback_signing_key_file). */}}
{{- define "robustloop.feedbackSigningKeyDir" -}}/var/run/secrets/robustloop/feedback-signing{{- end }}

{{- define "robustloop.feedbackSigningKeyFile" -}}
{{- include "robustloop.feedbackSigningKeyDir" . }}/key
{{- end }}

{{- define "robustloop.configMap" -}}
{{- printf "%s-config" (include "robustloop.fullname" .) }}
{{- end }}

{{- define "robustloop.serverServiceAccount" -}}
{{- printf "%s-server" (include "robustloop.fullname" .) }}
{{- end }}

{{- define "robustloop.receiverServiceAccount" -}}
{{- printf "%s-receiver" (include "robustloop.fullname" .) }}
{{- end }}

{{- define "robustloop.workflowServiceAccount" -}}
{{- printf "%s-workflow" (include "robustloop.fullname" .) }}
{{- end }}

{{- define "robustloop.viewerServiceAccount" -}}
{{- printf "%s-viewer" (include "robustloop.fullname" .) }}
{{- end }}

{{- define "robustloop.bootstrapServiceAccount" -}}
{{- printf "%s-bootstrap" (include "robustloop.fullname" .) }}
{{- end }}

{{/* The PrometheusRule that robustloop writes itself (never rendered here): the rules
calibrated for the production version. The chart's own PrometheusRule owns it. */}}
{{- define "robustloop.calibratedRule" -}}
{{- printf "%s-calibrated" (include "robustloop.fullname" .) }}
{{- end }}

{{/* Labels of that object, as JSON: those Prometheus selects rules by (as on the chart's
PrometheusRule) and the chart's name. Not app.kubernetes.io/instance, by which Argo CD's label
tracking would count it among the objects it renders, nor Helm's own: Helm does not manage it. */}}
{{- define "robustloop.calibratedRuleLabels" -}}
{{- $labels := dict "app.kubernetes.io/name" (include "robustloop.name" .) "app.kubernetes.io/part-of" "robustloop" "app.kubernetes.io/component" "calibrated-rules" }}
{{- $selected := include "robustloop.prometheusLabels" (dict "ctx" . "labels" .Values.prometheusRule.labels) | fromYaml }}
{{- toJson (mustMergeOverwrite $labels (default dict $selected)) }}
{{- end }}

{{/* Environment of a pod that publishes the calibrated rules (alert_rules.cluster). */}}
{{- define "robustloop.rulePublisherEnv" -}}
- name: ROBUSTLOOP_PROMETHEUS_RULE
  value: {{ include "robustloop.calibratedRule" . | quote }}
- name: ROBUSTLOOP_PROMETHEUS_RULE_OWNER
  value: {{ include "robustloop.fullname" . | quote }}
- name: ROBUSTLOOP_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: ROBUSTLOOP_PROMETHEUS_RULE_LABELS
  value: {{ include "robustloop.calibratedRuleLabels" . | quote }}
{{- end }}

{{/* RBAC rules of a pod that publishes the calibrated rules: read the chart's PrometheusRule
(its uid, which the written object's ownerReference names), read and replace the calibrated
one, and create it. Kubernetes RBAC cannot restrict `create` by resourceNames (the name is not
known when the request is authorized), so that verb is granted on prometheusrules in the
namespace; everything else names its object. */}}
{{- define "robustloop.rulePublisherRules" -}}
- apiGroups: ["monitoring.coreos.com"]
  resources: ["prometheusrules"]
  resourceNames: [{{ include "robustloop.fullname" . | quote }}, {{ include "robustloop.calibratedRule" . | quote }}]
  verbs: ["get"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["prometheusrules"]
  resourceNames: [{{ include "robustloop.calibratedRule" . | quote }}]
  verbs: ["update"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["prometheusrules"]
  verbs: ["create"]
{{- end }}

{{/* Where every pod mounts robustloop.yaml; pods run in this folder, so ./robustloop.yaml is found. */}}
{{- define "robustloop.configDir" -}}/etc/robustloop{{- end }}

{{/* Where the receiver finds its Argo Server token (own service account, or a Secret). */}}
{{- define "robustloop.argoTokenFile" -}}
{{- if .Values.argo.tokenSecret.name -}}
/var/run/secrets/robustloop/argo/{{ .Values.argo.tokenSecret.key }}
{{- else -}}
/var/run/secrets/kubernetes.io/serviceaccount/token
{{- end }}
{{- end }}

{{/* Where the receiver finds the Argo Server's CA bundle (argo.ca), or nothing. */}}
{{- define "robustloop.argoCaFile" -}}
{{- if or .Values.argo.ca.secret .Values.argo.ca.configMap -}}
/var/run/secrets/robustloop/argo-ca/{{ .Values.argo.ca.key }}
{{- end }}
{{- end }}

{{/* The config file: the user's `config` under the keys the chart must own. */}}
{{/* The alerts section the chart's rules were rendered from (`make chart-sync`): the workflow
recalibrates and republishes rules from it, so it must be the one in force. A ServiceMonitor
scraping less often than it was rendered for would leave the rules' windows without samples. */}}
{{- define "robustloop.alertsSection" -}}
{{- $alerts := .Files.Get "files/robustloop.alerts.yaml" | fromYaml }}
{{- if or (not $alerts) (hasKey $alerts "Error") }}
{{- fail "files/robustloop.alerts.yaml is missing; run `make chart-sync` from the repository root" }}
{{- end }}
{{- $rendered := include "robustloop.seconds" $alerts.scrape_interval | int }}
{{- $scraped := include "robustloop.seconds" .Values.server.monitor.interval | int }}
{{- if gt $scraped $rendered }}
{{- fail (printf "server.monitor.interval %s is longer than the %s the chart's rules were rendered for: their windows would hold too few samples; render them for it (`robustloop rules render --scrape-interval %s`, see docs/kubernetes.md)" .Values.server.monitor.interval $alerts.scrape_interval .Values.server.monitor.interval) }}
{{- end }}
{{- if .Values.alertmanagerConfig.enabled }}
{{- $kept := max (include "robustloop.seconds" $alerts.group_wait | int) (include "robustloop.seconds" $alerts.group_interval | int) }}
{{- range $key := list "groupWait" "groupInterval" }}
{{- $value := get $.Values.alertmanagerConfig $key }}
{{- if gt (include "robustloop.seconds" $value | int) $kept }}
{{- fail (printf "alertmanagerConfig.%s %s is longer than the %ds the chart's remediating alerts keep firing for after their condition clears (keep_firing_for: the longer of alerts.group_wait and alerts.group_interval): a short attack could resolve before Alertmanager notifies the receiver; use at most %ds, or render the rules for it (docs/kubernetes.md)" $key $value $kept $kept) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $alerts }}
{{- end }}

{{/* Seconds in a Prometheus duration made of h, m and s parts (e.g. 30s, 1m30s). */}}
{{- define "robustloop.seconds" -}}
{{- $total := 0 }}
{{- range $part := regexFindAll "[0-9]+[hms]" (toString .) -1 }}
{{- $n := regexFind "[0-9]+" $part | int }}
{{- $unit := regexFind "[hms]" $part }}
{{- $total = add $total (mul $n (get (dict "h" 3600 "m" 60 "s" 1) $unit)) }}
{{- end }}
{{- $total }}
{{- end }}

{{- define "robustloop.configYaml" -}}
{{- $owned := dict
  "store" (dict "path" (printf "%s/store" (trimSuffix "/" .Values.persistence.mountPath)))
  "capture" (dict "path" (include "robustloop.captureDir" .))
  "serving" (dict "host" "0.0.0.0" "port" (int .Values.server.port) "http_threads" (int .Values.server.threads)
      "feedback_token_file" (include "robustloop.feedbackTokenFile" .)
      "feedback_signing_key_file" (include "robustloop.feedbackSigningKeyFile" .))
  "webhook" (dict "host" "0.0.0.0" "port" (int .Values.receiver.port) "db_path" "/var/lib/robustloop-webhook/webhook.sqlite3"
      "token_file" (printf "%s/token" (include "robustloop.receiverTokenDir" .)))
  "submitter" (dict "kind" "argo" "runs_dir" "/tmp/robustloop-runs" "argo" (dict
      "host" .Values.argo.serverUrl
      "namespace" .Release.Namespace
      "token_file" (include "robustloop.argoTokenFile" .)
      "verify_tls" .Values.argo.verifyTls
      "ca_file" ((include "robustloop.argoCaFile" .) | default nil)))
  "rollout" (dict "prometheus_url" .Values.prometheusUrl)
  "stack" (dict "run_dir" "/tmp/robustloop-stack")
  "alerts" (include "robustloop.alertsSection" . | fromYaml)
}}
{{- $cfg := mustMergeOverwrite (deepCopy .Values.config) $owned }}
{{- toYaml $cfg }}
{{- end }}

{{/* The volumes every robustloop pod has: the config and a writable /tmp. */}}
{{- define "robustloop.commonVolumes" -}}
- name: config
  configMap:
    name: {{ include "robustloop.configMap" . }}
- name: tmp
  emptyDir: {}
{{- end }}

{{/* The config file's path, for the processes the chart starts itself. */}}
{{- define "robustloop.configEnv" -}}
- name: ROBUSTLOOP_CONFIG
  value: {{ include "robustloop.configDir" . }}/robustloop.yaml
{{- end }}

{{- define "robustloop.commonMounts" -}}
- name: config
  mountPath: {{ include "robustloop.configDir" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Environment of every robustloop container: caches and HOME on the writable /tmp. */}}
{{- define "robustloop.commonEnv" -}}
- name: HOME
  value: /tmp
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: PYTHONUNBUFFERED
  value: "1"
{{- end }}

{{- /* Resource requirements with every quantity a string (`1` -> "1"), as Argo's models expect. */}}
{{- define "robustloop.quantitiesAsStrings" -}}
{{- $out := dict }}
{{- range $section, $quantities := . }}
{{- if kindIs "map" $quantities }}
{{- $converted := dict }}
{{- range $name, $quantity := $quantities }}
{{- $_ := set $converted $name (toString $quantity) }}
{{- end }}
{{- $_ := set $out $section $converted }}
{{- else }}
{{- $_ := set $out $section $quantities }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}
