{{/* Names and labels. RayService names stay short: KubeRay appends "-raycluster-xxxxx". */}}
{{- define "mlgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "mlgate.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "mlgate.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mlgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mlgate.labels" -}}
{{ include "mlgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "mlgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "mlgate.jobsImage" -}}
{{- printf "%s:%s" .Values.jobs.image.repository (default .Chart.AppVersion .Values.jobs.image.tag) -}}
{{- end -}}

{{- define "mlgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mlgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The chart's own Secret exists only when a dev-only inline secret value is set. These values
are rendered into that Secret and nowhere else: pods read them through secretKeyRef. */}}
{{- define "mlgate.inlineSecrets" -}}
{{- $s := dict -}}
{{- with .Values.redis.password }}{{ $_ := set $s "redis-password" . }}{{ end -}}
{{- with .Values.admin.token }}{{ $_ := set $s "admin-token" . }}{{ end -}}
{{- with .Values.mlflow.username }}{{ $_ := set $s "mlflow-username" . }}{{ end -}}
{{- with .Values.mlflow.password }}{{ $_ := set $s "mlflow-password" . }}{{ end -}}
{{- toJson $s -}}
{{- end -}}

{{/* One env entry read from a Secret key; optional, so a Secret may hold only some keys. */}}
{{- define "mlgate.secretEnvVar" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef: {name: {{ .secret }}, key: {{ .key }}, optional: true}
{{- end -}}

{{/* Environment shared by the Ray containers and the jobs: secrets, and what MLflow reads. */}}
{{- define "mlgate.ownSecret" -}}
{{- if ne (include "mlgate.inlineSecrets" .) "{}" }}{{ include "mlgate.fullname" . }}{{ end -}}
{{- end -}}

{{/* Files the chart mounts read-only from Secrets (or, for the Redis CA, a ConfigMap). */}}
{{- define "mlgate.apiKeysFile" -}}
/etc/mlgate/auth/{{ .Values.auth.apiKeys.existingSecretKey }}
{{- end -}}

{{- define "mlgate.redisCaFile" -}}
/etc/mlgate/redis-ca/{{ .Values.redis.tls.caKey }}
{{- end -}}

{{- define "mlgate.redisCa" -}}
{{- if or .Values.redis.tls.caSecret .Values.redis.tls.caConfigMap }}true{{ end -}}
{{- end -}}

{{/* A Redis URL as the processes get it: (dict "root" $ "url" URL). A rediss:// URL names the
mounted CA bundle in redis-py's `ssl_ca_certs` query option (mlgate has no CA setting of its own;
redis-py reads it from the URL). */}}
{{- define "mlgate.redisUrl" -}}
{{- $url := .url -}}
{{- if and (hasPrefix "rediss://" $url) (include "mlgate.redisCa" .root) -}}
{{- $url = printf "%s%sssl_ca_certs=%s" $url (ternary "&" "?" (contains "?" $url)) (include "mlgate.redisCaFile" .root) -}}
{{- end -}}
{{- $url -}}
{{- end -}}

{{/* The Redis CA volume and its mount, for the gateway and the job pods (a CA is no secret:
world-readable, so Spark images that run without the pod's fsGroup can read it too). */}}
{{- define "mlgate.redisCaVolume" -}}
{{- $tls := .Values.redis.tls -}}
{{- if $tls.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ $tls.caSecret }}
    defaultMode: 0444
    items: [{key: {{ $tls.caKey }}, path: {{ $tls.caKey }}}]
{{- else if $tls.caConfigMap }}
- name: redis-ca
  configMap:
    name: {{ $tls.caConfigMap }}
    defaultMode: 0444
    items: [{key: {{ $tls.caKey }}, path: {{ $tls.caKey }}}]
{{- end }}
{{- end -}}

{{- define "mlgate.redisCaMount" -}}
{{- if include "mlgate.redisCa" . }}
- {name: redis-ca, mountPath: /etc/mlgate/redis-ca, readOnly: true}
{{- end }}
{{- end -}}

{{- define "mlgate.commonEnv" -}}
{{- $redis := .Values.redis.existingSecret | default (include "mlgate.ownSecret" .) -}}
{{- $mlflow := .Values.mlflow.existingSecret | default (include "mlgate.ownSecret" .) -}}
{{- with $redis }}
{{ include "mlgate.secretEnvVar" (dict "env" "MLGATE_REDIS__PASSWORD" "secret" . "key" $.Values.redis.existingSecretKey) }}
{{- end }}
{{- if and .Values.redis.fallback.url .Values.redis.fallback.existingSecret }}
{{ include "mlgate.secretEnvVar" (dict "env" "MLGATE_FALLBACK__REDIS__PASSWORD" "secret" .Values.redis.fallback.existingSecret "key" .Values.redis.fallback.existingSecretKey) }}
{{- end }}
{{- with $mlflow }}
{{- range $env, $key := dict "MLFLOW_TRACKING_USERNAME" "mlflow-username" "MLFLOW_TRACKING_PASSWORD" "mlflow-password" "MLFLOW_TRACKING_TOKEN" "mlflow-token" "AWS_ACCESS_KEY_ID" "aws-access-key-id" "AWS_SECRET_ACCESS_KEY" "aws-secret-access-key" }}
{{ include "mlgate.secretEnvVar" (dict "env" $env "secret" $mlflow "key" $key) }}
{{- end }}
{{- end }}
{{- with .Values.mlflow.s3EndpointUrl }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Whether the gateway asks callers for credentials (API keys or JWT configured). */}}
{{- define "mlgate.authOn" -}}
{{- $a := .Values.auth -}}
{{- if or $a.apiKeys.existingSecret $a.jwt.jwksUrl $a.jwt.keySecret }}true{{ end -}}
{{- end -}}

{{/* A quota rate, chart keys -> QuotaRate's (serving/auth/settings.py), as JSON. */}}
{{- define "mlgate.quotaRate" -}}
{{- $out := dict "rate_per_s" .ratePerS -}}
{{- if hasKey . "burst" }}{{ $_ := set $out "burst" .burst }}{{ end -}}
{{- toJson $out -}}
{{- end -}}

{{/* MLGATE_AUTH__* for the Ray containers: one variable per field (pydantic-settings merges them
with the application args), so the one secret among them, the JWT's static key, can come from a
Secret while the rest are plain values. Empty chart values leave the gateway's defaults. */}}
{{- define "mlgate.authEnv" -}}
{{- $a := .Values.auth -}}
{{- if $a.apiKeys.existingSecret }}
- {name: MLGATE_AUTH__API_KEYS_FILE, value: {{ include "mlgate.apiKeysFile" . | quote }}}
{{- end }}
{{- $jwt := $a.jwt -}}
{{- if or $jwt.jwksUrl $jwt.keySecret }}
{{- with $jwt.jwksUrl }}
- {name: MLGATE_AUTH__JWT__JWKS_URL, value: {{ . | quote }}}
{{- end }}
{{- with $jwt.keySecret }}
- name: MLGATE_AUTH__JWT__KEY
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ $jwt.keySecretKey }}}
{{- end }}
{{- range $field, $env := dict "issuer" "ISSUER" "audience" "AUDIENCE" "subjectClaim" "SUBJECT_CLAIM" "scopesClaim" "SCOPES_CLAIM" }}
{{- with get $jwt $field }}
- {name: MLGATE_AUTH__JWT__{{ $env }}, value: {{ . | quote }}}
{{- end }}
{{- end }}
{{- with $jwt.algorithms }}
- {name: MLGATE_AUTH__JWT__ALGORITHMS, value: {{ toJson . | quote }}}
{{- end }}
{{- with $jwt.scopeMap }}
- {name: MLGATE_AUTH__JWT__SCOPE_MAP, value: {{ toJson . | quote }}}
{{- end }}
{{- end }}
{{- with $a.anonymousScopes }}
- {name: MLGATE_AUTH__ANONYMOUS_SCOPES, value: {{ toJson . | quote }}}
{{- end }}
{{- if $a.insecure }}
- {name: MLGATE_AUTH__INSECURE, value: "true"}
{{- end }}
{{- $q := $a.quotas -}}
{{- with $q.perKey }}
- {name: MLGATE_AUTH__QUOTAS__PER_KEY, value: {{ include "mlgate.quotaRate" . | quote }}}
{{- end }}
{{- with $q.perModel }}
{{- $models := dict -}}
{{- range $model, $rate := . }}{{ $_ := set $models $model (fromJson (include "mlgate.quotaRate" $rate)) }}{{ end }}
- {name: MLGATE_AUTH__QUOTAS__PER_MODEL, value: {{ toJson $models | quote }}}
{{- end }}
{{- if or $q.perKey $q.perModel }}
- {name: MLGATE_AUTH__QUOTAS__ON_STORE_DOWN, value: {{ $q.onStoreDown | quote }}}
{{- end }}
{{- end -}}

{{/* The model reference of Settings.models: an alias to follow or a pinned version. */}}
{{- define "mlgate.variantRef" -}}
{{- if .version -}}
{{- toJson (dict "version" (toString .version)) -}}
{{- else -}}
{{- toJson (dict "alias" .alias) -}}
{{- end -}}
{{- end -}}

{{/* routing.analysis: chart (camelCase) keys -> Settings (snake_case) keys; unset keys are left
to the gateway's defaults. */}}
{{- define "mlgate.analysis" -}}
{{- $names := dict "windowS" "window_s" "minRequests" "min_requests" "maxErrorRateDelta" "max_error_rate_delta" "maxP99Ratio" "max_p99_ratio" "minP99DeltaMs" "min_p99_delta_ms" "maxScoreShift" "max_score_shift" "scoreShiftAction" "score_shift_action" "significance" "significance" -}}
{{- $out := dict -}}
{{- range $k, $v := .Values.routing.analysis }}{{ $_ := set $out (get $names $k) $v }}{{ end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The live routing object of the model (Settings RoutingSettings), as JSON. */}}
{{- define "mlgate.routing" -}}
{{- $r := .Values.routing -}}
{{- $canary := dict -}}
{{- if $r.canary.enabled -}}
{{- $canary = mergeOverwrite (fromJson (include "mlgate.variantRef" $r.canary)) (dict "weight" $r.canary.weight) -}}
{{- end -}}
{{- $shadows := list -}}
{{- range $r.shadows -}}
{{- $shadows = append $shadows (mergeOverwrite (fromJson (include "mlgate.variantRef" .)) (dict "name" .name "share" .share)) -}}
{{- end -}}
{{- $out := dict "canary" (ternary $canary nil $r.canary.enabled) "shadows" $shadows "key_header" $r.keyHeader -}}
{{- $analysis := fromJson (include "mlgate.analysis" .) -}}
{{- if $analysis }}{{ $_ := set $out "analysis" $analysis }}{{ end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Application args: Settings fields for the gateway (no secrets: those come from env).
`models` only for a model.name: without one, Settings' default (none) leaves the gateway to the
applied feature repository's models. */}}
{{- define "mlgate.appArgs" -}}
{{- $redis := dict "url" (include "mlgate.redisUrl" (dict "root" . "url" .Values.redis.url)) "cluster" .Values.redis.cluster -}}
{{- $args := dict "redis" $redis "mlflow_tracking_uri" .Values.mlflow.trackingUri "state_dir" "/home/mlgate/state" "log_level" .Values.gateway.logLevel "registry" (dict "poll_s" .Values.registry.pollS "require_digest" (.Values.registry.requireDigest | default false)) "http" (dict "host" "0.0.0.0" "ingress" "direct" "proxy_port" .Values.gateway.proxyPort "drain_s" .Values.gateway.drainS) -}}
{{- with .Values.redis.fallback.url }}{{ $_ := set $args "fallback" (dict "redis" (dict "url" (include "mlgate.redisUrl" (dict "root" $ "url" .)))) }}{{ end -}}
{{- with .Values.model.name -}}
{{- $model := mergeOverwrite (dict "name" . "placement" "inprocess" "allow_pyfunc" ($.Values.model.allowPyfunc | default false)) (fromJson (include "mlgate.variantRef" $.Values.model)) -}}
{{- $_ := set $args "models" (list $model) -}}
{{- end -}}
{{- with include "mlgate.protocols" . | fromJson }}{{ $_ := set $args "protocols" . }}{{ end -}}
{{- toJson (mergeOverwrite $args (deepCopy .Values.gateway.settings)) -}}
{{- end -}}

{{/* protocols.* -> Settings' ProtocolSettings, as JSON; {} when neither is set (the gateway's
defaults: no gRPC, /invocations for the only model). gRPC binds 0.0.0.0 like HTTP. */}}
{{- define "mlgate.protocols" -}}
{{- $p := .Values.protocols -}}
{{- $out := dict -}}
{{- with $p.defaultModel }}{{ $_ := set $out "default_model" . }}{{ end -}}
{{- if $p.grpc.enabled -}}
{{- $_ := set $out "grpc" (dict "enabled" true "port" $p.grpc.port "host" "0.0.0.0" "max_message_bytes" $p.grpc.maxMessageBytes) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The Ray Serve config (serveConfigV2): the same shape as serving/config/serve.yaml. */}}
{{- define "mlgate.serveConfig" -}}
{{- $g := .Values.gateway -}}
{{- $autoscaling := dict "min_replicas" $g.replicas.min "initial_replicas" $g.replicas.min "max_replicas" $g.replicas.max "target_ongoing_requests" $g.targetOngoingRequests "upscale_delay_s" $g.upscaleDelayS "downscale_delay_s" $g.downscaleDelayS -}}
{{- $routing := dict -}}
{{- with .Values.model.name }}{{ $routing = dict . (fromJson (include "mlgate.routing" $)) }}{{ end -}}
{{- $gateway := dict "name" "Gateway" "max_ongoing_requests" $g.maxOngoingRequests "max_replicas_per_node" 1 "autoscaling_config" $autoscaling "ray_actor_options" (dict "num_cpus" $g.numCpus) "user_config" (dict "routing" $routing) -}}
{{- $app := dict "name" "mlgate" "route_prefix" "/" "import_path" "serving.ray_app:build" "args" (fromJson (include "mlgate.appArgs" .)) "deployments" (list $gateway) -}}
{{- $config := dict "proxy_location" "EveryNode" "http_options" (dict "host" "0.0.0.0" "port" $g.proxyPort "request_timeout_s" 30 "keep_alive_timeout_s" 30) "logging_config" (dict "log_level" "WARNING" "enable_access_log" false) "applications" (list $app) -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Pod-level settings shared by the Ray pods: (dict "root" $ "group" .Values.ray.head|worker).
The root filesystem is read-only, so Ray and Python get writable /tmp and $HOME (model cache
under MLGATE_STATE_DIR), and Ray's object store gets a memory-backed /dev/shm. */}}
{{- define "mlgate.rayPodSpec" -}}
{{- $root := .root -}}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - {name: tmp, emptyDir: {}}
  - {name: home, emptyDir: {}}
  - name: shm
    emptyDir: {medium: Memory, sizeLimit: {{ .group.shmSize }}}
  {{- /* Secrets as files, readable by the pod's fsGroup only (0440). */}}
  {{- with $root.Values.auth.apiKeys }}
  {{- if .existingSecret }}
  - name: api-keys
    secret:
      secretName: {{ .existingSecret }}
      defaultMode: 0440
      items: [{key: {{ .existingSecretKey }}, path: {{ .existingSecretKey }}}]
  {{- end }}
  {{- end }}
  {{- with $root.Values.http.tls.existingSecret }}
  - name: tls
    secret:
      secretName: {{ . }}
      defaultMode: 0440
      items: [{key: tls.crt, path: tls.crt}, {key: tls.key, path: tls.key}]
  {{- end }}
  {{- with include "mlgate.redisCaVolume" $root | trim }}
  {{- . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* The Ray container's image, security context, env and mounts (head and workers alike: the
Serve controller on the head and the replicas on the workers both read the ingress settings). */}}
{{- define "mlgate.rayContainer" -}}
image: {{ include "mlgate.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
env:
  # Direct ingress: the replica serves HTTP itself on 8000, one replica per pod, exactly one
  # port (the range's end is exclusive), so the Service's target port is always right.
  - {name: RAY_SERVE_ENABLE_DIRECT_INGRESS, value: "1"}
  - {name: RAY_SERVE_THROUGHPUT_OPTIMIZED, value: "1"}
  - {name: RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT, value: "8000"}
  - {name: RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT, value: "8001"}
  - {name: RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S, value: {{ .Values.gateway.drainS | quote }}}
  {{- with include "mlgate.commonEnv" . | trim }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- with .Values.admin.existingSecret | default (include "mlgate.ownSecret" .) }}
  # Admin API and variant-forcing header, and the routing hash's key (the jobs get neither).
  {{- include "mlgate.secretEnvVar" (dict "env" "MLGATE_ADMIN__TOKEN" "secret" . "key" $.Values.admin.existingSecretKey) | nindent 2 }}
  {{- include "mlgate.secretEnvVar" (dict "env" "MLGATE_ROUTING_SECRET" "secret" . "key" "routing-secret") | nindent 2 }}
  {{- end }}
  # Who may call the gateway (API keys, JWT, scopes, quotas), and HTTPS. No secrets here: the
  # key file, the JWT key and the TLS key are files or secretKeyRefs from Secrets.
  {{- include "mlgate.authEnv" . | trim | nindent 2 }}
  {{- if .Values.http.tls.existingSecret }}
  - {name: MLGATE_HTTP__TLS_CERTFILE, value: /etc/mlgate/tls/tls.crt}
  - {name: MLGATE_HTTP__TLS_KEYFILE, value: /etc/mlgate/tls/tls.key}
  {{- end }}
  {{- with .Values.gateway.env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
volumeMounts:
  - {name: tmp, mountPath: /tmp}
  - {name: home, mountPath: /home/mlgate}
  - {name: shm, mountPath: /dev/shm}
  {{- if .Values.auth.apiKeys.existingSecret }}
  - {name: api-keys, mountPath: /etc/mlgate/auth, readOnly: true}
  {{- end }}
  {{- if .Values.http.tls.existingSecret }}
  - {name: tls, mountPath: /etc/mlgate/tls, readOnly: true}
  {{- end }}
  {{- with include "mlgate.redisCaMount" . | trim }}
  {{- . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* The scheduled jobs: name -> the `mlgate` arguments it runs. */}}
{{- define "mlgate.jobs" -}}
{{- $jobs := dict -}}
{{- with .Values.jobs.featureSync -}}
{{- if .enabled -}}
{{- $args := list "features" "sync" -}}
{{- if .incremental }}{{ $args = append $args "--incremental" }}{{ end -}}
{{- $_ := set $jobs "feature-sync" (dict "schedule" .schedule "args" $args) -}}
{{- end -}}
{{- end -}}
{{- with .Values.jobs.batchScore -}}
{{- if .enabled -}}
{{- $m := $.Values.model -}}
{{- $ref := "" -}}
{{- if $m.name }}{{ $ref = ternary (printf "%s/%v" $m.name $m.version) (printf "%s@%s" $m.name $m.alias) (not (empty $m.version)) }}{{ end -}}
{{- $args := list "batch" "score" -}}
{{- with default $ref .model }}{{ $args = concat $args (list "--model" .) }}{{ end -}}
{{- $_ := set $jobs "batch-score" (dict "schedule" .schedule "args" $args) -}}
{{- end -}}
{{- end -}}
{{- with .Values.jobs.logCompact -}}
{{- if .enabled -}}
{{- $_ := set $jobs "log-compact" (dict "schedule" .schedule "args" (list "log" "compact")) -}}
{{- end -}}
{{- end -}}
{{- with .Values.jobs.monitor -}}
{{- if .enabled -}}
{{- $models := .models | default (compact (list $.Values.model.name)) -}}
{{- if not $models }}{{ fail "jobs.monitor.enabled needs jobs.monitor.models or model.name" }}{{ end -}}
{{- range $models -}}
{{- $args := list "monitor" "--model" . "--window" $.Values.jobs.monitor.window "--threshold" (toString $.Values.jobs.monitor.threshold) -}}
{{- $_ := set $jobs (printf "monitor-%s" (. | lower | replace "_" "-" | replace "." "-" | trunc 40 | trimSuffix "-")) (dict "schedule" $.Values.jobs.monitor.schedule "args" $args) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $jobs -}}
{{- end -}}

{{/* Environment of the jobs: the settings the gateway gets as application args, as MLGATE_*. */}}
{{- define "mlgate.jobsEnv" -}}
- {name: MLGATE_STATE_DIR, value: /data}
- {name: MLGATE_REDIS__URL, value: {{ include "mlgate.redisUrl" (dict "root" . "url" .Values.redis.url) | quote }}}
- {name: MLGATE_REDIS__CLUSTER, value: {{ .Values.redis.cluster | quote }}}
{{- with .Values.redis.fallback.url }}
- {name: MLGATE_FALLBACK__REDIS__URL, value: {{ include "mlgate.redisUrl" (dict "root" $ "url" .) | quote }}}
{{- end }}
- {name: MLFLOW_TRACKING_URI, value: {{ .Values.mlflow.trackingUri | quote }}}
{{- with include "mlgate.commonEnv" . | trim }}
{{ . }}
{{- end }}
{{- end -}}

{{- define "mlgate.jobVolumes" -}}
- name: state
  {{- if .Values.jobs.stateClaim }}
  persistentVolumeClaim: {claimName: {{ .Values.jobs.stateClaim }}}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- include "mlgate.redisCaVolume" . }}
{{- end -}}

{{- define "mlgate.jobMounts" -}}
- {name: state, mountPath: /data}
{{- include "mlgate.redisCaMount" . }}
{{- end -}}

{{/* The Secret holding the Ray cluster's token (key auth_token); empty: KubeRay makes its own. */}}
{{- define "mlgate.rayAuthSecret" -}}
{{- with .Values.ray.auth -}}
{{- if .existingSecret -}}
{{- .existingSecret -}}
{{- else if .createSecret -}}
{{- include "mlgate.fullname" $ }}-ray-auth
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Secure-by-default checks: credentials for the gateway, and no secret where it would be
rendered in clear (the RayService's Serve config, env values). */}}
{{- define "mlgate.validateSecurity" -}}
{{- $a := .Values.auth -}}
{{- if not (or (include "mlgate.authOn" .) $a.insecure) -}}
{{- fail "no credentials configured for the gateway, which listens on 0.0.0.0 and would refuse to start: set auth.apiKeys.existingSecret (a Secret with hashed API keys) and/or auth.jwt.jwksUrl or auth.jwt.keySecret; only for development, auth.insecure=true serves predictions to anyone who reaches port 8000" -}}
{{- end -}}
{{- if and $a.jwt.jwksUrl $a.jwt.keySecret -}}
{{- fail "auth.jwt: set jwksUrl or keySecret, not both (the gateway verifies tokens with one key source)" -}}
{{- end -}}
{{- if and (not (or $a.jwt.jwksUrl $a.jwt.keySecret)) (or $a.jwt.issuer $a.jwt.audience $a.jwt.algorithms $a.jwt.subjectClaim $a.jwt.scopesClaim $a.jwt.scopeMap) -}}
{{- fail "auth.jwt fields are set but neither auth.jwt.jwksUrl nor auth.jwt.keySecret: JWT needs a key source" -}}
{{- end -}}
{{- if and .Values.ray.auth.enabled (semverCompare "<2.52.0" .Values.ray.version) -}}
{{- fail (printf "ray.auth needs Ray 2.52 or newer (ray.version is %s; KubeRay refuses token authentication below it): upgrade the image's Ray, or set ray.auth.enabled=false" .Values.ray.version) -}}
{{- end -}}
{{- $m := .Values.monitoring.serviceMonitor -}}
{{- if and $m.enabled (include "mlgate.authOn" .) (not $m.bearerTokenSecret.name) (not (has "metrics" $a.anonymousScopes)) -}}
{{- fail "monitoring.serviceMonitor: the gateway's /metrics needs the `metrics` scope once auth is on: set monitoring.serviceMonitor.bearerTokenSecret.name (a Secret holding an API key with that scope) or add metrics to auth.anonymousScopes" -}}
{{- end -}}
{{- $tls := .Values.redis.tls -}}
{{- if and $tls.caSecret $tls.caConfigMap -}}
{{- fail "redis.tls: set caSecret or caConfigMap, not both" -}}
{{- end -}}
{{- if and (include "mlgate.redisCa" .) (not (or (hasPrefix "rediss://" .Values.redis.url) (hasPrefix "rediss://" .Values.redis.fallback.url))) -}}
{{- fail "redis.tls: a CA is set but no Redis URL uses rediss:// (TLS)" -}}
{{- end -}}
{{- range $name, $url := dict "redis.url" .Values.redis.url "redis.fallback.url" .Values.redis.fallback.url "mlflow.trackingUri" .Values.mlflow.trackingUri -}}
{{- if regexMatch "^[A-Za-z][A-Za-z0-9+.-]*://[^/?#@]*:[^/?#@]*@" $url -}}
{{- fail (printf "%s carries a password, which would be rendered into the RayService in clear: take it out of the URL and give it through a Secret (redis.existingSecret, redis.fallback.existingSecret, mlflow.existingSecret)" $name) -}}
{{- end -}}
{{- end -}}
{{- $s := .Values.gateway.settings -}}
{{- range $path := list "admin.token" "redis.password" "fallback.redis.password" -}}
{{- $node := $s -}}
{{- range $part := splitList "." $path -}}
{{- if kindIs "map" $node }}{{ $node = get $node $part }}{{ else }}{{ $node = "" }}{{ end -}}
{{- end -}}
{{- if $node -}}
{{- fail (printf "gateway.settings.%s is a secret and gateway.settings is rendered into the RayService in clear: use the chart's Secret values (admin.existingSecret, redis.existingSecret, redis.fallback.existingSecret)" $path) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Checks JSON schema cannot express: they fail `helm install/upgrade/template` with a reason. */}}
{{- define "mlgate.validate" -}}
{{- include "mlgate.validateSecurity" . -}}
{{- $g := .Values.gateway.replicas -}}
{{- if lt (int $g.max) (int $g.min) -}}
{{- fail (printf "gateway.replicas.max (%v) must be at least gateway.replicas.min (%v)" $g.max $g.min) -}}
{{- end -}}
{{- with .Values.protocols.grpc -}}
{{- if .enabled -}}
{{- $taken := dict "8000" "the HTTP port" (toString $.Values.gateway.proxyPort) "gateway.proxyPort" "8080" "Ray's metrics port" "52365" "Ray's dashboard agent" -}}
{{- with get $taken (toString .port) -}}
{{- fail (printf "protocols.grpc.port %v is %s on the worker pods: pick another port (default 8001)" $.Values.protocols.grpc.port .) -}}
{{- end -}}
{{- if and (ge (int .port) 10002) (le (int .port) 19999) -}}
{{- fail (printf "protocols.grpc.port %v is in Ray's worker port range (10002-19999), where Ray's processes may already listen: pick another port (default 8001)" .port) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $c := .Values.routing.canary -}}
{{- if and (not .Values.model.name) (or $c.enabled .Values.routing.shadows) -}}
{{- fail "routing.canary/routing.shadows apply to model.name, which is empty (the gateway serves the applied feature repository's models): set model.name, or give a repository model its canary and shadows under `serving: routing:` in the repository" -}}
{{- end -}}
{{- if and .Values.model.name $c.enabled (eq (include "mlgate.variantRef" $c) (include "mlgate.variantRef" .Values.model)) -}}
{{- fail (printf "routing.canary must name another alias or version than the model itself (%s)" (include "mlgate.variantRef" $c)) -}}
{{- end -}}
{{- end -}}
