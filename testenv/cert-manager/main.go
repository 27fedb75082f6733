// Command cert-manager runs the parts of cert-manager that gitmesh's cert-manager certificate
// provider is tested against, one per subcommand:
//
//	cert-manager controller  the CA issuer (Issuers, ClusterIssuers and their Ready condition) and
//	                         the approver of CertificateRequests
//	cert-manager webhook     the admission webhook: validation, defaulting and the identity and
//	                         approval checks of CertificateRequests, serving a certificate from its
//	                         own CA kept in a Secret
//	cert-manager cainjector  copies a Secret's CA into the webhook configurations that ask for it
//	                         (cert-manager.io/inject-ca-from-secret)
//
// The ACME, Vault and Venafi issuers and the Certificate controllers are left out, and with them
// their cloud SDKs. The module is named under cert-manager's module path so that it may use the
// webhook's packages, which cert-manager keeps internal.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cert-manager/cert-manager/internal/apis/config/shared"
	webhookconfig "github.com/cert-manager/cert-manager/internal/apis/config/webhook"
	cmwebhook "github.com/cert-manager/cert-manager/internal/webhook"
	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	"github.com/cert-manager/cert-manager/pkg/controller/cainjector"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

var commands = map[string]func(ctx context.Context, args []string) error{
	"controller": controller,
	"webhook":    webhook,
	"cainjector": injector,
}

func main() {
	if len(os.Args) < 2 || commands[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: cert-manager controller|webhook|cainjector [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctrl.SetLogger(logf.Log)
	ctx = logf.NewContext(ctx, logf.Log, os.Args[1])
	if err := commands[os.Args[1]](ctx, os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "cert-manager %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func controller(ctx context.Context, args []string) error {
	flags := flag.NewFlagSet("controller", flag.ExitOnError)
	kubeconfig := flags.String("kubeconfig", "", "the kubeconfig of the cluster to run against (in a pod: its own)")
	clusterResources := flags.String("cluster-resource-namespace", "cert-manager",
		"where the Secrets of ClusterIssuers are")
	workers := flags.Int("workers", 2, "workers per controller")
	_ = flags.Parse(args)
	factory, err := controllerpkg.NewContextFactory(ctx, controllerpkg.ContextOptions{
		Kubeconfig:         *kubeconfig,
		KubernetesAPIQPS:   50,
		KubernetesAPIBurst: 100,
		IssuerOptions:      controllerpkg.IssuerOptions{ClusterResourceNamespace: *clusterResources},
	})
	if err != nil {
		return err
	}
	built, err := factory.Build()
	if err != nil {
		return err
	}
	group, ctx := errgroup.WithContext(ctx)
	for name, construct := range controllerpkg.Known() {
		c, err := construct(factory)
		if err != nil {
			return fmt.Errorf("controller %s: %w", name, err)
		}
		fmt.Fprintln(os.Stderr, "cert-manager: starting controller", name)
		group.Go(func() error { return c.Run(*workers, ctx) })
	}
	built.SharedInformerFactory.Start(ctx.Done())
	built.KubeSharedInformerFactory.Start(ctx.Done())
	built.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())
	return group.Wait()
}

func webhook(ctx context.Context, args []string) error {
	flags := flag.NewFlagSet("webhook", flag.ExitOnError)
	kubeconfig := flags.String("kubeconfig", "", "the kubeconfig of the cluster to run against (in a pod: its own)")
	port := flags.Int("secure-port", 10250, "the port of the admission webhook (HTTPS)")
	healthz := flags.Int("healthz-port", 6080, "the port of /healthz and /livez (HTTP)")
	secret := flags.String("ca-secret", "cert-manager/cert-manager-webhook-ca",
		"namespace/name of the Secret holding the CA of the serving certificate (made when missing)")
	names := flags.String("dns-names", "", "comma-separated DNS names of the serving certificate")
	_ = flags.Parse(args)
	namespace, name, ok := strings.Cut(*secret, "/")
	if !ok {
		return fmt.Errorf("--ca-secret %q is not namespace/name", *secret)
	}
	server, err := cmwebhook.NewCertManagerWebhookServer(logf.FromContext(ctx), webhookconfig.WebhookConfiguration{
		SecurePort:  int32(*port),
		HealthzPort: int32(*healthz),
		KubeConfig:  *kubeconfig,
		TLSConfig: shared.TLSConfig{Dynamic: shared.DynamicServingConfig{
			SecretNamespace: namespace,
			SecretName:      name,
			DNSNames:        strings.Split(*names, ","),
			LeafDuration:    7 * 24 * time.Hour,
		}},
		MetricsListenAddress: "0", // no metrics server
	})
	if err != nil {
		return err
	}
	return server.Run(ctx)
}

func injector(ctx context.Context, args []string) error {
	flags := flag.NewFlagSet("cainjector", flag.ExitOnError)
	kubeconfig := flags.String("kubeconfig", "", "the kubeconfig of the cluster to run against (in a pod: its own)")
	_ = flags.Parse(args)
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return err
	}
	config.UserAgent = "cert-manager-cainjector" // its field manager, for the CA bundles it applies
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	manager, err := ctrl.NewManager(config, ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		// Secrets are read when a CA is injected, not cached: cainjector watches their metadata only.
		Client: client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}}}},
	})
	if err != nil {
		return err
	}
	err = cainjector.RegisterAllInjectors(ctx, manager, cainjector.SetupOptions{
		EnabledReconcilersFor: map[string]bool{
			"mutatingwebhookconfiguration":   true,
			"validatingwebhookconfiguration": true,
		},
	})
	if err != nil {
		return err
	}
	return manager.Start(ctx)
}
