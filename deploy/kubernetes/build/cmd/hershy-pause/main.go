// Command hershy-pause is the Pod sandbox ("pause") image's only binary: it holds the Pod's
// namespaces and exits on SIGINT/SIGTERM. Built static, packed as an image and imported
// locally by scripts/setup-kubernetes.sh (nothing can be pulled on these machines).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	<-signals
}
