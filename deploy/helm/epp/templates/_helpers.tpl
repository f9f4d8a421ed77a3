{{/* The InferencePool's name (default: the release's, as in the reference charts);
every object is named after it. */}}
{{- define "epp.poolName" -}}
{{- .Values.inferencePool.name | default .Release.Name -}}
{{- end -}}

{{/* The namespace of the pool, and of every object of the chart. */}}
{{- define "epp.namespace" -}}
{{- .Values.inferencePool.namespace | default .Release.Namespace -}}
{{- end -}}

{{- define "epp.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" (include "epp.poolName" .) (.Values.nameOverride | default "epp") | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "epp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "epp.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "epp.selectorLabels" -}}
app.kubernetes.io/name: {{ .Values.nameOverride | default "epp" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "epp.labels" -}}
{{ include "epp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: endpoint-picker
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The Redis URL replicas share state through: sync.redisUrl, or the chart's own Redis;
empty when sync is off. Both at once fail the render. */}}
{{- define "epp.syncRedisUrl" -}}
{{- $sync := .Values.sync | default dict -}}
{{- $redis := $sync.redis | default dict -}}
{{- if and $sync.redisUrl $redis.enabled -}}
{{- fail "sync.redisUrl and sync.redis.enabled: choose one Redis for the replicas to share" -}}
{{- end -}}
{{- if $sync.redisUrl -}}
{{- $sync.redisUrl -}}
{{- else if $redis.enabled -}}
{{- printf "redis://%s:%d/0" (include "epp.redisName" .) (int ($redis.port | default 6379)) -}}
{{- end -}}
{{- end -}}

{{- define "epp.redisName" -}}
{{- printf "%s-redis" (include "epp.fullname" . | trunc 57 | trimSuffix "-") -}}
{{- end -}}

{{/* "true" when leader election is on: as set, else when there is more than one replica
and they share no state. More than one replica with neither fails the render. */}}
{{- define "epp.leaderElection" -}}
{{- $sync := ne (include "epp.syncRedisUrl" .) "" -}}
{{- $leader := false -}}
{{- if kindIs "invalid" .Values.leaderElection.enabled -}}
{{- $leader = and (gt (int .Values.replicas) 1) (not $sync) -}}
{{- else -}}
{{- $leader = .Values.leaderElection.enabled -}}
{{- end -}}
{{- if and (gt (int .Values.replicas) 1) (not $leader) (not $sync) -}}
{{- fail (printf "replicas: %d without leader election needs shared state (sync.redis.enabled or sync.redisUrl): replicas on their own views split the prefix cache" (int .Values.replicas)) -}}
{{- end -}}
{{- $leader -}}
{{- end -}}

{{/* Where the config file and the certificate are mounted. */}}
{{- define "epp.configDir" -}}/etc/epp/config{{- end -}}
{{- define "epp.certDir" -}}/etc/epp/tls{{- end -}}

{{/*
One flag value as text: whole numbers without an exponent (values arrive as float64),
lists joined with commas, maps as k=v,k2=v2.
*/}}
{{- define "epp.flagValue" -}}
{{- if kindIs "float64" . -}}
{{- if eq . (floor .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if kindIs "slice" . -}}
{{- $items := list -}}
{{- range . -}}{{- $items = append $items (include "epp.flagValue" .) -}}{{- end -}}
{{- join "," $items -}}
{{- else if kindIs "map" . -}}
{{- $items := list -}}
{{- range $key, $value := . -}}{{- $items = append $items (printf "%s=%s" $key (include "epp.flagValue" $value)) -}}{{- end -}}
{{- join "," $items -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/*
Every flag of `epp serve`, as a YAML map of flag name to text: the ones the chart derives
from its values, then .Values.flags. A flag in .Values.flags that the chart sets itself
fails the render.
*/}}
{{- define "epp.flags" -}}
{{- $flags := dict
  "pool-name" (include "epp.poolName" .)
  "pool-namespace" (include "epp.namespace" .)
  "pool-group" .Values.inferencePool.group
  "grpc-port" (include "epp.flagValue" .Values.ports.grpc)
  "grpc-health-port" (include "epp.flagValue" .Values.ports.grpcHealth)
  "metrics-port" (include "epp.flagValue" .Values.ports.metrics)
  "secure-serving" (include "epp.flagValue" .Values.tls.secureServing)
  "ha-enable-leader-election" (include "epp.leaderElection" .)
-}}
{{- if .Values.config -}}
{{- $_ := set $flags "config-file" (printf "%s/epp.yaml" (include "epp.configDir" .)) -}}
{{- end -}}
{{- if .Values.tls.certSecret -}}
{{- $_ := set $flags "cert-path" (include "epp.certDir" .) -}}
{{- end -}}
{{- with include "epp.syncRedisUrl" . -}}
{{- $_ := set $flags "sync-redis-url" . -}}
{{- end -}}
{{- $managed := list "pool-name" "pool-namespace" "pool-group" "grpc-port" "grpc-health-port" "metrics-port" "secure-serving" "cert-path" "config-file" "ha-enable-leader-election" "sync-redis-url" -}}
{{- range $name, $value := .Values.flags -}}
{{- if has $name $managed -}}
{{- fail (printf "flags.%s: the chart sets --%s from its own values (see values.yaml)" $name $name) -}}
{{- end -}}
{{- if not (kindIs "invalid" $value) -}}
{{- $_ := set $flags $name (include "epp.flagValue" $value) -}}
{{- end -}}
{{- end -}}
{{- toYaml $flags -}}
{{- end -}}

{{/* The chart's Redis pods: labels apart from epp's, so epp's Service never selects them. */}}
{{- define "epp.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-redis" (.Values.nameOverride | default "epp") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Apart from epp's too, so epp's ServiceMonitor does not select the Redis Service. */}}
{{- define "epp.redisLabels" -}}
{{ include "epp.redisSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: sync-store
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}
