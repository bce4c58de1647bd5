// Command hershy-provisioner is the test cluster's dynamic hostPath provisioner: it makes the
// PersistentVolumeClaims of one StorageClass bind, each to a PersistentVolume of its own backed by
// a directory under -root, and removes that directory and the volume when the claim is deleted
// (reclaim policy Delete).
//
// Both nodes of the test cluster run on the same machine, so every node sees every directory:
// the volumes carry no node affinity and a Pod's /state follows it when it is rescheduled to the
// other node (drain). Capacity is not enforced (hostPath has no quota).
//
// It polls (every -interval) instead of watching: the cluster is small, and a poll cannot miss
// an event or need a resync.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const provisionedByAnnotation = "pv.kubernetes.io/provisioned-by"

type provisioner struct {
	client       kubernetes.Interface
	name         string // the StorageClass's provisioner field
	storageClass string
	root         string
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of a user allowed to manage PVs and read PVCs")
	name := flag.String("provisioner", "hershy.local/hostpath", "provisioner name (StorageClass .provisioner)")
	storageClass := flag.String("storage-class", "hershy-local", "StorageClass whose claims this provisions")
	root := flag.String("root", "/var/lib/hershy-kubernetes/volumes", "directory holding one directory per volume")
	interval := flag.Duration("interval", 500*time.Millisecond, "poll interval")
	flag.Parse()

	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatalf("kubeconfig: %v", err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		log.Fatalf("client: %v", err)
	}
	if err := os.MkdirAll(*root, 0o711); err != nil {
		log.Fatalf("root: %v", err)
	}
	p := &provisioner{client: client, name: *name, storageClass: *storageClass, root: *root}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log.Printf("provisioning claims of StorageClass %q under %s", p.storageClass, p.root)
	ticker := time.NewTicker(*interval)
	defer ticker.Stop()
	for {
		if err := p.provisionPending(ctx); err != nil && ctx.Err() == nil {
			log.Printf("provision: %v", err)
		}
		if err := p.deleteReleased(ctx); err != nil && ctx.Err() == nil {
			log.Printf("delete: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func (p *provisioner) provisionPending(ctx context.Context) error {
	claims, err := p.client.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range claims.Items {
		claim := &claims.Items[i]
		if claim.Spec.StorageClassName == nil || *claim.Spec.StorageClassName != p.storageClass {
			continue
		}
		if claim.Spec.VolumeName != "" || claim.Status.Phase != corev1.ClaimPending || claim.DeletionTimestamp != nil {
			continue
		}
		if err := p.provision(ctx, claim); err != nil {
			log.Printf("claim %s/%s: %v", claim.Namespace, claim.Name, err)
		}
	}
	return nil
}

func (p *provisioner) provision(ctx context.Context, claim *corev1.PersistentVolumeClaim) error {
	volumeName := "pvc-" + string(claim.UID)
	dir := filepath.Join(p.root, volumeName)
	// World-writable: a hostPath volume gets no fsGroup ownership change, and a program's
	// container may run as any user; each volume is a directory only its own Pod mounts.
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		return err
	}
	size, ok := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	if !ok {
		return fmt.Errorf("no storage request")
	}
	hostPathType := corev1.HostPathDirectory
	volume := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        volumeName,
			Annotations: map[string]string{provisionedByAnnotation: p.name},
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes:                   claim.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			StorageClassName:              p.storageClass,
			VolumeMode:                    claim.Spec.VolumeMode,
			ClaimRef: &corev1.ObjectReference{
				Kind:            "PersistentVolumeClaim",
				APIVersion:      "v1",
				Namespace:       claim.Namespace,
				Name:            claim.Name,
				UID:             claim.UID,
				ResourceVersion: claim.ResourceVersion,
			},
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &hostPathType},
			},
		},
	}
	_, err := p.client.CoreV1().PersistentVolumes().Create(ctx, volume, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err == nil {
		log.Printf("claim %s/%s: created volume %s at %s", claim.Namespace, claim.Name, volumeName, dir)
	}
	return err
}

func (p *provisioner) deleteReleased(ctx context.Context) error {
	volumes, err := p.client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range volumes.Items {
		volume := &volumes.Items[i]
		if volume.Annotations[provisionedByAnnotation] != p.name {
			continue
		}
		if volume.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
			continue
		}
		if volume.Status.Phase != corev1.VolumeReleased && volume.Status.Phase != corev1.VolumeFailed {
			continue
		}
		if volume.Spec.HostPath == nil {
			continue
		}
		dir := filepath.Clean(volume.Spec.HostPath.Path)
		// Never remove anything outside the root this provisioner owns.
		if filepath.Dir(dir) != filepath.Clean(p.root) || !strings.HasPrefix(filepath.Base(dir), "pvc-") {
			log.Printf("volume %s: path %s is not under %s; left alone", volume.Name, dir, p.root)
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			log.Printf("volume %s: remove %s: %v", volume.Name, dir, err)
			continue
		}
		err := p.client.CoreV1().PersistentVolumes().Delete(ctx, volume.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			log.Printf("volume %s: delete: %v", volume.Name, err)
			continue
		}
		log.Printf("volume %s: released; removed %s", volume.Name, dir)
	}
	return nil
}
