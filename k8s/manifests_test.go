package k8s

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// overlays are the kustomizations users apply.
var overlays = []string{"dev", "production"}

// kinds maps apiVersion and kind to the API type every built object must decode into. A kind
// that is not here fails the build test: add its type when the manifests gain one.
var kinds = map[string]func() any{
	"v1/Namespace":                           func() any { return &corev1.Namespace{} },
	"v1/ServiceAccount":                      func() any { return &corev1.ServiceAccount{} },
	"v1/ConfigMap":                           func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                              func() any { return &corev1.Secret{} },
	"v1/Service":                             func() any { return &corev1.Service{} },
	"apps/v1/Deployment":                     func() any { return &appsv1.Deployment{} },
	"apps/v1/StatefulSet":                    func() any { return &appsv1.StatefulSet{} },
	"policy/v1/PodDisruptionBudget":          func() any { return &policyv1.PodDisruptionBudget{} },
	"autoscaling/v2/HorizontalPodAutoscaler": func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
	"networking.k8s.io/v1/NetworkPolicy":     func() any { return &networkingv1.NetworkPolicy{} },
	"networking.k8s.io/v1/Ingress":           func() any { return &networkingv1.Ingress{} },
}

// object is one built manifest, decoded.
type object struct {
	Kind, Namespace, Name string
	Obj                   any // a pointer to the API type of kinds
}

// built is one overlay after kustomize build.
type built struct {
	overlay string
	objects []object
}

var (
	buildMu sync.Mutex
	builds  = map[string]*built{}
)

// build returns the overlay built and strictly decoded, once per test binary.
func build(t *testing.T, overlay string) *built {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if b := builds[overlay]; b != nil {
		return b
	}
	b, err := kustomizeBuild(overlay)
	if err != nil {
		t.Fatalf("overlay %s: %v", overlay, err)
	}
	builds[overlay] = b
	return b
}

// kustomizeBuild builds overlays/<overlay> from a copy of this directory in which every
// X.example stands in for the file X it shows (production's secrets, never committed).
func kustomizeBuild(overlay string) (*built, error) {
	root, err := os.MkdirTemp("", "callrouter-k8s-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	if err := copyTree(".", root); err != nil {
		return nil, err
	}
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), filepath.Join(root, "overlays", overlay))
	if err != nil {
		return nil, err
	}
	b := &built{overlay: overlay}
	for _, r := range m.Resources() {
		data, err := r.MarshalJSON()
		if err != nil {
			return nil, err
		}
		o, err := decode(data)
		if err != nil {
			return nil, fmt.Errorf("%s %s/%s: %w", r.GetKind(), r.GetNamespace(), r.GetName(), err)
		}
		b.objects = append(b.objects, o)
	}
	return b, nil
}

// decode decodes one object strictly (unknown and duplicate fields are errors, field names are
// case-sensitive: the API server's strict field validation) into its API type.
func decode(data []byte) (object, error) {
	var tm metav1.TypeMeta
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(data, &tm); err != nil {
		return object{}, err
	}
	newObj, ok := kinds[tm.APIVersion+"/"+tm.Kind]
	if !ok {
		return object{}, fmt.Errorf("apiVersion %q kind %q has no API type in kinds", tm.APIVersion, tm.Kind)
	}
	obj := newObj()
	strict, err := sigsjson.UnmarshalStrict(data, obj)
	if err != nil {
		return object{}, err
	}
	if len(strict) > 0 {
		return object{}, fmt.Errorf("strict decoding: %v", strict)
	}
	meta := obj.(metav1.Object)
	return object{Kind: tm.Kind, Namespace: meta.GetNamespace(), Name: meta.GetName(), Obj: obj}, nil
}

// copyTree copies the regular files under src to dst, X.example as X.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		// An example file wins over a real one of someone's checkout (it comes later in the walk).
		rel = strings.TrimSuffix(rel, ".example")
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(dst, filepath.Dir(rel)), 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
}

// get returns the object of that kind, namespace and name, or nil.
func (b *built) get(kind, namespace, name string) any {
	for _, o := range b.objects {
		if o.Kind == kind && o.Namespace == namespace && o.Name == name {
			return o.Obj
		}
	}
	return nil
}

// workload is a pod template and what owns it.
type workload struct {
	Kind, Namespace, Name string
	Selector              *metav1.LabelSelector
	Template              *corev1.PodTemplateSpec
}

// workloads returns every pod template of the build.
func (b *built) workloads() []workload {
	var out []workload
	for _, o := range b.objects {
		switch v := o.Obj.(type) {
		case *appsv1.Deployment:
			out = append(out, workload{o.Kind, o.Namespace, o.Name, v.Spec.Selector, &v.Spec.Template})
		case *appsv1.StatefulSet:
			out = append(out, workload{o.Kind, o.Namespace, o.Name, v.Spec.Selector, &v.Spec.Template})
		}
	}
	return out
}

// each runs f for every overlay as a subtest.
func each(t *testing.T, f func(t *testing.T, b *built)) {
	for _, ov := range overlays {
		t.Run(ov, func(t *testing.T) { f(t, build(t, ov)) })
	}
}
