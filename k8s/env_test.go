package k8s

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// placeholders stand in for the downward API fields the kubelet fills in.
var placeholders = map[string]string{
	"status.hostIP": "192.0.2.10", // TEST-NET-1: a documentation address, never contacted
	"status.podIP":  "192.0.2.20",
	"spec.nodeName": "node-1",
}

// containerEnv is what the kubelet gives a container: its environment, and the files of its
// ConfigMap, Secret and emptyDir volumes (written under root, see rewrite).
type containerEnv struct {
	Vars   map[string]string
	Order  []string // names in the order the kubelet sets them
	root   string
	mounts []string // mount paths, longest first
}

// environ returns the environment as KEY=VALUE with mount paths rewritten under root.
func (e *containerEnv) environ() []string {
	out := make([]string, 0, len(e.Order))
	for _, k := range e.Order {
		out = append(out, k+"="+e.rewrite(e.Vars[k]))
	}
	return out
}

// rewrite maps a path inside the container to the file written for it under root.
func (e *containerEnv) rewrite(v string) string {
	for _, m := range e.mounts {
		if v == m || strings.HasPrefix(v, m+"/") {
			return filepath.Join(e.root, v)
		}
	}
	return v
}

func (e *containerEnv) set(k, v string) {
	if _, ok := e.Vars[k]; !ok {
		e.Order = append(e.Order, k)
	}
	e.Vars[k] = v
}

// expand does the kubelet's $(VAR) expansion: defined variables are replaced, $$ is a literal $,
// anything else stays as written.
func (e *containerEnv) expand(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case strings.HasPrefix(s[i:], "$$"):
			b.WriteByte('$')
			i++
		case strings.HasPrefix(s[i:], "$("):
			end := strings.IndexByte(s[i:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+end]
			if v, ok := e.Vars[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+end+1])
			}
			i += end
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// source returns the data of a ConfigMap or Secret of the build, nil if it is not there.
func (b *built) source(kind, namespace, name string) map[string][]byte {
	switch o := b.get(kind, namespace, name).(type) {
	case *corev1.ConfigMap:
		out := map[string][]byte{}
		for k, v := range o.Data {
			out[k] = []byte(v)
		}
		for k, v := range o.BinaryData {
			out[k] = v
		}
		return out
	case *corev1.Secret:
		out := map[string][]byte{}
		for k, v := range o.Data {
			out[k] = v
		}
		for k, v := range o.StringData {
			out[k] = []byte(v)
		}
		return out
	}
	return nil
}

// resolveEnv builds a container's environment and files from the build, as the kubelet would,
// with the downward API fields from placeholders (the pod is named after its workload).
func (b *built) resolveEnv(w workload, c *corev1.Container, root string) (*containerEnv, error) {
	e := &containerEnv{Vars: map[string]string{}, root: root}
	ns := w.Namespace
	setRef := func(env, kind, name, key string, optional *bool) error {
		v, ok := b.source(kind, ns, name)[key]
		switch {
		case ok:
			e.set(env, string(v))
		case optional == nil || !*optional:
			return fmt.Errorf("env %s: %s %s/%s (or its key %q) is not in the build", env, kind, ns, name, key)
		}
		return nil
	}
	for _, ef := range c.EnvFrom {
		kind, name, optional := "ConfigMap", "", (*bool)(nil)
		switch {
		case ef.ConfigMapRef != nil:
			name, optional = ef.ConfigMapRef.Name, ef.ConfigMapRef.Optional
		case ef.SecretRef != nil:
			kind, name, optional = "Secret", ef.SecretRef.Name, ef.SecretRef.Optional
		}
		data := b.source(kind, ns, name)
		if data == nil && (optional == nil || !*optional) {
			return nil, fmt.Errorf("envFrom: %s %s/%s is not in the build", kind, ns, name)
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			e.set(ef.Prefix+k, string(data[k]))
		}
	}
	for _, ev := range c.Env {
		switch vf := ev.ValueFrom; {
		case vf == nil:
			e.set(ev.Name, e.expand(ev.Value))
		case vf.FieldRef != nil:
			v, ok := placeholders[vf.FieldRef.FieldPath]
			switch vf.FieldRef.FieldPath {
			case "metadata.name":
				v, ok = w.Name+"-0", true
			case "metadata.namespace":
				v, ok = ns, true
			}
			if !ok {
				return nil, fmt.Errorf("env %s: no placeholder for fieldRef %s", ev.Name, vf.FieldRef.FieldPath)
			}
			e.set(ev.Name, v)
		case vf.ConfigMapKeyRef != nil:
			r := vf.ConfigMapKeyRef
			if err := setRef(ev.Name, "ConfigMap", r.Name, r.Key, r.Optional); err != nil {
				return nil, err
			}
		case vf.SecretKeyRef != nil:
			r := vf.SecretKeyRef
			if err := setRef(ev.Name, "Secret", r.Name, r.Key, r.Optional); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("env %s: unsupported valueFrom", ev.Name)
		}
	}
	for _, m := range c.VolumeMounts {
		if err := b.writeVolume(w, m, root); err != nil {
			return nil, err
		}
		e.mounts = append(e.mounts, m.MountPath)
	}
	sort.Slice(e.mounts, func(i, j int) bool { return len(e.mounts[i]) > len(e.mounts[j]) })
	return e, nil
}

// writeVolume writes the files a volume mount shows under root.
func (b *built) writeVolume(w workload, m corev1.VolumeMount, root string) error {
	var vol *corev1.Volume
	for i := range w.Template.Spec.Volumes {
		if w.Template.Spec.Volumes[i].Name == m.Name {
			vol = &w.Template.Spec.Volumes[i]
		}
	}
	if vol == nil {
		return fmt.Errorf("volumeMount %s: no such volume", m.Name)
	}
	dir := filepath.Join(root, m.MountPath)
	var data map[string][]byte
	var items []corev1.KeyToPath
	switch {
	case vol.EmptyDir != nil:
		return os.MkdirAll(dir, 0o755)
	case vol.ConfigMap != nil:
		if data = b.source("ConfigMap", w.Namespace, vol.ConfigMap.Name); data == nil {
			return fmt.Errorf("volume %s: ConfigMap %s is not in the build", vol.Name, vol.ConfigMap.Name)
		}
		items = vol.ConfigMap.Items
	case vol.Secret != nil:
		if data = b.source("Secret", w.Namespace, vol.Secret.SecretName); data == nil {
			return fmt.Errorf("volume %s: Secret %s is not in the build", vol.Name, vol.Secret.SecretName)
		}
		items = vol.Secret.Items
	default:
		return fmt.Errorf("volume %s: only emptyDir, configMap and secret volumes are resolved", vol.Name)
	}
	if len(items) == 0 {
		for k := range data {
			items = append(items, corev1.KeyToPath{Key: k, Path: k})
		}
	}
	files := map[string][]byte{}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return fmt.Errorf("volume %s: no key %q", vol.Name, it.Key)
		}
		files[it.Path] = v
	}
	if m.SubPath != "" {
		v, ok := files[m.SubPath]
		if !ok {
			return fmt.Errorf("volumeMount %s: subPath %q is not in the volume", m.Name, m.SubPath)
		}
		files = map[string][]byte{"": v}
	}
	for p, v := range files {
		path := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, v, 0o600); err != nil {
			return err
		}
	}
	return nil
}
