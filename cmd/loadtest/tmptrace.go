package main

import (
	"os"
	"runtime/trace"
	"time"
)

func init() {
	if p := os.Getenv("LT_TRACE"); p != "" {
		go func() {
			time.Sleep(12 * time.Second)
			f, _ := os.Create(p)
			trace.Start(f)
			time.Sleep(3 * time.Second)
			trace.Stop()
			f.Close()
		}()
	}
}
