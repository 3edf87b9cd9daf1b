package k8s

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// targets are the Dockerfile targets, one per component binary; the manifests' images are
// ghcr.io/callrouter/<target>.
var targets = []string{"ingest", "router", "worker"}

const imageRepo = "ghcr.io/callrouter/"

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	Cmd  string // upper case: FROM, RUN, COPY, …
	Args string
}

// stage is one FROM and what follows it.
type stage struct {
	Name, Image string
	Instrs      []instruction
}

// dockerfile is the parsed ../Dockerfile.
type dockerfile struct {
	Args   map[string]string // ARGs before the first FROM, with their defaults
	Stages []stage
}

// parseDockerfile reads the instructions of a Dockerfile: comments and blank lines dropped,
// backslash continuations joined, ${VAR} of global ARGs substituted in FROM.
func parseDockerfile(text string) (*dockerfile, error) {
	d := &dockerfile{Args: map[string]string{}}
	var logical []string
	cur := ""
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur == "") {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur += strings.TrimSpace(strings.TrimSuffix(trimmed, "\\")) + " "
			continue
		}
		logical = append(logical, cur+trimmed)
		cur = ""
	}
	if cur != "" {
		return nil, fmt.Errorf("a continuation runs off the end: %q", cur)
	}
	subst := regexp.MustCompile(`\$\{?(\w+)\}?`)
	for _, l := range logical {
		cmd, args, _ := strings.Cut(l, " ")
		in := instruction{Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args)}
		switch {
		case in.Cmd == "ARG" && len(d.Stages) == 0:
			k, v, _ := strings.Cut(in.Args, "=")
			d.Args[k] = v
		case in.Cmd == "FROM":
			var s stage
			f := strings.Fields(in.Args)
			for i := 0; i < len(f); i++ {
				switch {
				case strings.HasPrefix(f[i], "--"):
				case strings.EqualFold(f[i], "AS") && i+1 < len(f):
					s.Name = f[i+1]
					i++
				case s.Image == "":
					s.Image = subst.ReplaceAllStringFunc(f[i], func(m string) string {
						if v, ok := d.Args[subst.FindStringSubmatch(m)[1]]; ok {
							return v
						}
						return m
					})
				default:
					return nil, fmt.Errorf("FROM %s: unexpected %q", in.Args, f[i])
				}
			}
			d.Stages = append(d.Stages, s)
		case len(d.Stages) == 0:
			return nil, fmt.Errorf("%s before the first FROM", in.Cmd)
		default:
			s := &d.Stages[len(d.Stages)-1]
			s.Instrs = append(s.Instrs, in)
		}
	}
	return d, nil
}

func readDockerfile(t *testing.T) *dockerfile {
	t.Helper()
	b, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	d, err := parseDockerfile(string(b))
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	return d
}

func (d *dockerfile) stage(name string) *stage {
	for i := range d.Stages {
		if d.Stages[i].Name == name {
			return &d.Stages[i]
		}
	}
	return nil
}

// all returns the arguments of every instruction cmd of the stage.
func (s *stage) all(cmd string) []string {
	var out []string
	for _, in := range s.Instrs {
		if in.Cmd == cmd {
			out = append(out, in.Args)
		}
	}
	return out
}

// image is what a target's image runs.
type image struct {
	Entrypoint []string
	Binary     string // the name of the built binary (go build -o /out/<Binary>)
	UID        int64
}

// image returns the entrypoint, binary and user of a target, checking the target's shape.
func (d *dockerfile) image(target string) (image, error) {
	s := d.stage(target)
	if s == nil {
		return image{}, fmt.Errorf("no stage %q", target)
	}
	var img image
	if s.Image != "scratch" && !(strings.HasPrefix(s.Image, "gcr.io/distroless/static") && strings.HasSuffix(s.Image, ":nonroot")) {
		return img, fmt.Errorf("target %s is FROM %s; want scratch or distroless static :nonroot", target, s.Image)
	}
	ep := s.all("ENTRYPOINT")
	if len(ep) != 1 || json.Unmarshal([]byte(ep[0]), &img.Entrypoint) != nil || len(img.Entrypoint) == 0 {
		return img, fmt.Errorf("target %s: want one ENTRYPOINT in exec form, have %q", target, ep)
	}
	for _, c := range s.all("COPY") {
		f := strings.Fields(c)
		if len(f) == 3 && f[0] == "--from=build" && f[2] == img.Entrypoint[0] && strings.HasPrefix(f[1], "/out/") {
			img.Binary = strings.TrimPrefix(f[1], "/out/")
		}
	}
	if img.Binary == "" {
		return img, fmt.Errorf("target %s: no COPY --from=build /out/<binary> %s", target, img.Entrypoint[0])
	}
	users := s.all("USER")
	if len(users) != 1 {
		return img, fmt.Errorf("target %s: want one USER, have %q", target, users)
	}
	uid, _, _ := strings.Cut(users[0], ":")
	n, err := strconv.ParseInt(uid, 10, 64)
	if err != nil || n <= 0 {
		return img, fmt.Errorf("target %s: USER %q is not a numeric non-root user", target, users[0])
	}
	img.UID = n
	return img, nil
}

func TestDockerfileBuildsStaticNonRootImages(t *testing.T) {
	d := readDockerfile(t)
	b := d.stage("build")
	if b == nil {
		t.Fatal("no build stage")
	}
	goMod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(goMod)
	if goLine == nil || !strings.HasPrefix(b.Image, "golang:"+string(goLine[1])) {
		t.Errorf("build stage FROM %s; want golang:%s (go.mod's go line)", b.Image, goLine[1])
	}
	run := strings.Join(b.all("RUN"), "\n")
	for _, want := range []string{"CGO_ENABLED=0", "go build", "-trimpath", "-buildvcs=false", "-o /out/"} {
		if !strings.Contains(run, want) {
			t.Errorf("the build stage's RUN has no %q", want)
		}
	}
	var finals []string
	for _, s := range d.Stages {
		if s.Name != "build" {
			finals = append(finals, s.Name)
		}
	}
	if !slices.Equal(finals, targets) {
		t.Errorf("targets %q, want %q", finals, targets)
	}
	for _, target := range targets {
		img, err := d.image(target)
		if err != nil {
			t.Error(err)
			continue
		}
		if !strings.Contains(run, "./cmd/"+img.Binary) {
			t.Errorf("target %s copies /out/%s, which the build stage does not build (./cmd/%s)", target, img.Binary, img.Binary)
		}
		main, err := os.ReadFile(filepath.Join("..", "cmd", img.Binary, "main.go"))
		if err != nil || !regexp.MustCompile(`(?m)^package main$`).Match(main) {
			t.Errorf("target %s: cmd/%s is not a main package: %v", target, img.Binary, err)
		}
	}
	ignore, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{".git", "k8s/overlays/*/secrets"} {
		if !slices.Contains(strings.Fields(string(ignore)), want) {
			t.Errorf(".dockerignore does not keep %s out of the build context", want)
		}
	}
}

func TestDockerfileParserRejectsBadShapes(t *testing.T) {
	for name, text := range map[string]string{
		"root user":    "FROM golang:1.26 AS build\nFROM scratch AS worker\nCOPY --from=build /out/worker /worker\nUSER 0\nENTRYPOINT [\"/worker\"]\n",
		"named user":   "FROM golang:1.26 AS build\nFROM scratch AS worker\nCOPY --from=build /out/worker /worker\nUSER nonroot\nENTRYPOINT [\"/worker\"]\n",
		"shell form":   "FROM golang:1.26 AS build\nFROM scratch AS worker\nCOPY --from=build /out/worker /worker\nUSER 1\nENTRYPOINT /worker\n",
		"full base":    "FROM golang:1.26 AS build\nFROM debian:12 AS worker\nCOPY --from=build /out/worker /worker\nUSER 1\nENTRYPOINT [\"/worker\"]\n",
		"not the copy": "FROM golang:1.26 AS build\nFROM scratch AS worker\nCOPY --from=build /out/worker /bin/w\nUSER 1\nENTRYPOINT [\"/worker\"]\n",
	} {
		d, err := parseDockerfile(text)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := d.image("worker"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	d, err := parseDockerfile("ARG V=1.26\n# c\nFROM --platform=$BUILDPLATFORM golang:${V} AS build\nRUN a \\\n  # inner comment\n  b\nFROM scratch AS worker\nCOPY --from=build /out/worker /worker\nUSER 65532:65532\nENTRYPOINT [\"/worker\"]\n")
	if err != nil {
		t.Fatal(err)
	}
	if img, err := d.image("worker"); err != nil || img.Binary != "worker" || img.UID != 65532 || d.Stages[0].Image != "golang:1.26" || d.Stages[0].all("RUN")[0] != "a b" {
		t.Errorf("good file: %+v %v %+v", img, err, d.Stages)
	}
}
