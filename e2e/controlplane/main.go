// The control plane the cluster e2e suites meet: kube-apiserver, kube-scheduler,
// kube-controller-manager and kubectl, built from their upstream Go packages into one multi-call
// binary (one link, one copy of the shared code). The component is chosen by the name the binary is
// called by (a symlink) or, failing that, by its first argument:
//
//	controlplane kube-apiserver --etcd-servers=... ...
//	ln -s controlplane kubectl && ./kubectl get nodes
//
// e2e/scripts/controlplane-build.sh stamps the version of k8s.io/kubernetes in go.mod into
// component-base's and client-go's version variables (-ldflags -X, as Kubernetes' own builds do), so
// /version and `kubectl version` say v1.37.x rather than v0.0.0-master.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

var components = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kubectl":                 kubectl.NewDefaultKubectlCommand,
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := components[name]; !ok && len(os.Args) > 1 {
		// Called as `controlplane <component> args...`: cobra reads os.Args[1:].
		name = os.Args[1]
		os.Args = os.Args[1:]
	}
	newCommand, ok := components[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "usage: %s {kube-apiserver|kube-controller-manager|kube-scheduler|kubectl} [flags]\n", filepath.Base(os.Args[0]))
		os.Exit(2)
	}
	if name == "kubectl" {
		// As kubectl's own main: its errors are printed its way.
		if err := cli.RunNoErrOutput(newCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
		return
	}
	os.Exit(cli.Run(newCommand()))
}
