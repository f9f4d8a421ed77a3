{{/*
The reference charts' values, copied onto this chart's own keys in place, so that a values
file written for them installs epp unchanged:

- Gateway API Inference Extension v1.x `inferencepool`: inferenceExtension.*, its
  inferencePool.* (modelServerType, modelServerProtocol, parser, apiVersion beside the
  targetPorts and modelServers this chart shares), inferenceObjectives, provider,
  experimentalHttpRoute;
- llm-d-router v0.10 (`llm-d-router-gateway`): router.epp.*, router.monitoring,
  router.tracing, router.inferencePool, router.modelServers, router.inferenceObjectives,
  router.extraServicePorts, provider, httpRoute.

deploy/README.md has the map, key by key. Every template includes this first; copying
twice gives the same values. A reference key wins over this chart's own. A feature epp
does not have fails the render, naming the key.
*/}}
{{- define "epp.adoptReferenceValues" -}}
{{- $v := .Values -}}
{{- $gie := $v.inferenceExtension | default dict -}}
{{- $router := $v.router | default dict -}}
{{- if and $gie $router -}}
{{- fail "inferenceExtension (the Gateway API Inference Extension's chart) and router (llm-d-router's): give the values in one shape" -}}
{{- end -}}
{{- $pool := $v.inferencePool -}}
{{- $e := $gie -}}
{{- $monitoring := $gie.monitoring | default dict -}}
{{- $tracing := $gie.tracing | default dict -}}
{{- $serverType := $pool.modelServerType | default "" -}}
{{- $protocol := $pool.modelServerProtocol | default "" -}}
{{- if $gie -}}
{{- /* The inferencepool chart always creates its pool. */ -}}
{{- if kindIs "invalid" $pool.create -}}{{- $_ := set $pool "create" true -}}{{- end -}}
{{- with $gie.failureMode -}}{{- $_ := set $pool "failureMode" . -}}{{- end -}}
{{- with $gie.extraServicePorts -}}{{- $_ := set $v "extraServicePorts" . -}}{{- end -}}
{{- end -}}
{{- if $router -}}
{{- $e = $router.epp | default dict -}}
{{- $monitoring = $router.monitoring | default dict -}}
{{- $tracing = $router.tracing | default dict -}}
{{- $routerPool := $router.inferencePool | default dict -}}
{{- if and (hasKey $routerPool "create") (not $routerPool.create) -}}
{{- fail "router.inferencePool.create: false is llm-d-router's standalone mode (no InferencePool), which this chart does not have: run `epp serve --endpoint-selector` instead" -}}
{{- end -}}
{{- if kindIs "invalid" $pool.create -}}{{- $_ := set $pool "create" true -}}{{- end -}}
{{- with $routerPool.failureMode -}}{{- $_ := set $pool "failureMode" . -}}{{- end -}}
{{- $servers := $router.modelServers | default dict -}}
{{- with $servers.matchLabels -}}{{- $_ := set $pool "modelServers" (dict "matchLabels" .) -}}{{- end -}}
{{- with $servers.targetPorts -}}{{- $_ := set $pool "targetPorts" . -}}{{- end -}}
{{- $serverType = $servers.type | default $serverType -}}
{{- $protocol = $servers.protocol | default $protocol -}}
{{- with $router.inferenceObjectives -}}{{- $_ := set $v "inferenceObjectives" . -}}{{- end -}}
{{- with $router.extraServicePorts -}}{{- $_ := set $v "extraServicePorts" . -}}{{- end -}}
{{- range $key := list "proxy" "tokenizer" "latencyPredictor" -}}
{{- if (index $router $key | default dict).enabled -}}
{{- fail (printf "router.%s.enabled: epp has no %s" $key $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* What both shapes keep under inferenceExtension / router.epp. */ -}}
{{- $where := ternary "router.epp" "inferenceExtension" (not (empty $router)) -}}
{{- if hasKey $e "replicas" -}}{{- $_ := set $v "replicas" $e.replicas -}}{{- end -}}
{{- with $e.image -}}
{{- with .repository -}}
{{- $_ := set $v.image "repository" (ternary (printf "%s/%s" $e.image.registry .) . (not (empty $e.image.registry))) -}}
{{- end -}}
{{- with .tag -}}{{- $_ := set $v.image "tag" . -}}{{- end -}}
{{- with .pullPolicy -}}{{- $_ := set $v.image "pullPolicy" . -}}{{- end -}}
{{- end -}}
{{- with $e.extProcPort -}}{{- $_ := set $v.ports "grpc" . -}}{{- end -}}
{{- with $e.grpcHealthPort -}}{{- $_ := set $v.ports "grpcHealth" . -}}{{- end -}}
{{- range $key := list "env" "resources" "affinity" "tolerations" "podAnnotations" "extraContainerPorts" -}}
{{- with index $e $key -}}{{- $_ := set $v $key . -}}{{- end -}}
{{- end -}}
{{- /* The reference's logging flags stand in for this chart's default log-level and
log-format, which would otherwise win over them. */ -}}
{{- if or (hasKey ($e.flags | default dict) "v") (hasKey ($e.flags | default dict) "zap-log-level") -}}
{{- $_ := unset $v.flags "log-level" -}}
{{- end -}}
{{- if hasKey ($e.flags | default dict) "zap-encoder" -}}
{{- $_ := unset $v.flags "log-format" -}}
{{- end -}}
{{- range $name, $value := $e.flags -}}
{{- if eq $name "ha-enable-leader-election" -}}
{{- $_ := set $v.leaderElection "enabled" (eq (toString $value) "true") -}}
{{- else -}}
{{- $_ := set $v.flags $name $value -}}
{{- end -}}
{{- end -}}
{{- with $e.metricsDataSource -}}
{{- if not (has (.scheme | default "http") (list "http")) -}}
{{- fail (printf "%s.metricsDataSource.scheme: epp scrapes model servers over http only" $where) -}}
{{- end -}}
{{- with .path -}}{{- $_ := set $v.flags "model-server-metrics-path" . -}}{{- end -}}
{{- end -}}
{{- range $e.parsers -}}
{{- if ne . "openai-parser" -}}
{{- fail (printf "%s.parsers: %s: epp parses OpenAI requests only" $where .) -}}
{{- end -}}
{{- end -}}
{{- range $key := list "sidecar" "latencyPredictor" -}}
{{- if (index $e $key | default dict).enabled -}}
{{- fail (printf "%s.%s.enabled: epp has no %s" $where $key $key) -}}
{{- end -}}
{{- end -}}
{{- /* The reference's config file: pluginsConfigFile names a key of pluginsCustomConfig;
their own default-plugins.yaml stands for this chart's `config`. */ -}}
{{- $file := $e.pluginsConfigFile | default "default-plugins.yaml" -}}
{{- $custom := $e.pluginsCustomConfig | default dict -}}
{{- if hasKey $custom $file -}}
{{- $config := index $custom $file | fromYaml -}}
{{- if hasKey $config "Error" -}}
{{- fail (printf "%s.pluginsCustomConfig.%s is not YAML: %s" $where $file $config.Error) -}}
{{- end -}}
{{- $_ := set $v "config" $config -}}
{{- else if ne $file "default-plugins.yaml" -}}
{{- fail (printf "%s.pluginsConfigFile: %s is not a key of pluginsCustomConfig" $where $file) -}}
{{- end -}}
{{- /* Monitoring: a Prometheus Operator ServiceMonitor. epp's /metrics takes no token, so
prometheus.auth is not needed. */ -}}
{{- $prometheus := $monitoring.prometheus | default dict -}}
{{- $sm := $v.monitoring.serviceMonitor -}}
{{- with $monitoring.interval -}}{{- $_ := set $sm "interval" . -}}{{- end -}}
{{- if hasKey $prometheus "enabled" -}}{{- $_ := set $sm "enabled" $prometheus.enabled -}}{{- end -}}
{{- with $prometheus.extraLabels -}}{{- $_ := set $sm "labels" . -}}{{- end -}}
{{- $provider := ($monitoring.provider | default dict).name | default "" -}}
{{- if and $prometheus.enabled (not (has $provider (list "" "prometheusoperator"))) -}}
{{- fail (printf "monitoring.provider.name %s: this chart makes a Prometheus Operator ServiceMonitor only" $provider) -}}
{{- end -}}
{{- if $tracing.enabled -}}{{- $_ := set $v.flags "tracing" "true" -}}{{- end -}}
{{- /* Model servers. */ -}}
{{- if has $serverType (list "vllm" "sglang") -}}
{{- $_ := set $v.flags "engine" $serverType -}}
{{- else if $serverType -}}
{{- fail (printf "model server type %s: epp reads the metrics of vllm and sglang" $serverType) -}}
{{- end -}}
{{- if not (has ($protocol | default "http") (list "http")) -}}
{{- fail (printf "model server protocol %s: epp routes HTTP (OpenAI) requests only" $protocol) -}}
{{- end -}}
{{- if not (has ($pool.parser | default "openai-parser") (list "openai-parser")) -}}
{{- fail (printf "inferencePool.parser %s: epp parses OpenAI requests only" $pool.parser) -}}
{{- end -}}
{{- with $pool.apiVersion -}}{{- $_ := set $pool "group" (first (splitList "/" .)) -}}{{- end -}}
{{- /* Gateway-side objects the reference charts can make; this chart makes none. */ -}}
{{- with $v.provider -}}
{{- if not (has (.name | default "none") (list "none")) -}}
{{- fail (printf "provider.name %s: this chart makes no gateway-specific objects; see deploy/gateway" .name) -}}
{{- end -}}
{{- end -}}
{{- if or ($v.experimentalHttpRoute | default dict).enabled ($v.httpRoute | default dict).create -}}
{{- fail "this chart makes no HTTPRoute; see deploy/gateway/httproutes.yaml" -}}
{{- end -}}
{{- end -}}
